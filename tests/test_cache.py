"""Activation caches: exact features, reading, reuse, refusal, resumption, disk full, lock."""

import errno
import json

import numpy as np
import pytest
import torch

from igpt_eval.cache import ActivationCache, ExtractSettings, row_masks, write_cache
from igpt_eval.cache import writer as cache_writer
from igpt_eval.cache.manifest import CacheInputs, Manifest, masking
from igpt_eval.errors import IGPTError
from igpt_eval.io import file_lock
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.igpt import IGPT
from igpt_eval.model.loading import state_dict_hash

N, T = 37, 64  # 37 rows: the last batch of 8 is partial


@pytest.fixture(autouse=True)
def one_thread():
    # The machine may be busy: two threads fighting over loaded cores are far slower than one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_model(objective="ar", seed=0):
    torch.manual_seed(seed)
    model = IGPT(IGPTConfig.preset("tiny", objective=objective))
    with torch.no_grad():  # non-trivial weights everywhere
        for p in model.parameters():
            p.normal_(std=0.1)
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 16, (N, T)).astype(np.uint16), np.arange(N) % 3


def run(model, data, out, *, inputs=None, overwrite=False, **settings):
    settings = ExtractSettings(**{"batch_size": 8, **settings})
    return write_cache(model, *data, out, settings, inputs=inputs, overwrite=overwrite)


def batched(fn, n, b=8, axis=1):
    """``fn(lo, hi)`` over the fixed batch boundaries, concatenated along rows (``axis``)."""
    return np.concatenate([fn(lo, min(n, lo + b)) for lo in range(0, n, b)], axis=axis)


# --------------------------------------------------------------------------- values
def test_ar_features_equal_model_features(tmp_path, data):
    model = make_model()
    cache = run(model, data, tmp_path / "c")
    x = torch.from_numpy(data[0].astype(np.int64))
    ref = batched(lambda lo, hi: model.features(x[lo:hi]).numpy(), N)  # [4, N, d]
    assert cache.layers == [0, 1, 2, 3] and cache.sites[-1] == "ln_f"
    for layer, a in cache:
        assert a.dtype == np.float32 and a.shape == (N, 32)
        np.testing.assert_array_equal(a, ref[layer])
    # And (to rounding) the features of the whole split in one batch.
    np.testing.assert_allclose(cache[2], model.features(x)[2].numpy(), atol=1e-6)
    np.testing.assert_array_equal(cache.labels, data[1])


def test_bert_features_average_the_documented_per_row_masks(tmp_path, data):
    model = make_model("bert")
    cache = run(model, data, tmp_path / "c", bert_masks=2, seed=5, layers=[1, 3])
    x = torch.from_numpy(data[0].astype(np.int64))

    def ref(lo, hi):
        m = row_masks(range(lo, hi), T, 2, seed=5, p=model.config.mask_prob)
        return ((model.features(x[lo:hi], [1, 3], mask=m[0]) +
                 model.features(x[lo:hi], [1, 3], mask=m[1])) / 2).numpy()  # fmt: skip

    want = batched(ref, N)
    np.testing.assert_array_equal(cache[1], want[0])
    np.testing.assert_array_equal(cache[3], want[1])
    # Masks are a function of (seed, row) only: another batch size gives the same features.
    other = run(model, data, tmp_path / "b5", bert_masks=2, seed=5, layers=[1, 3], batch_size=5)
    np.testing.assert_allclose(other[3], cache[3], atol=1e-6)
    m = row_masks([0, 1], T, 2, seed=5)
    assert not torch.equal(m[0], m[1]) and not torch.equal(m[:, 0], m[:, 1])
    assert torch.equal(row_masks([1], T, 2, seed=5)[:, 0], m[:, 1])
    assert not torch.equal(row_masks([0], T, 2, seed=6)[:, 0], m[:, 0])
    assert 0.05 < row_masks(range(100), T, 1, seed=0).float().mean() < 0.25


def test_bert_with_zero_masks_is_read_unmasked(tmp_path, data):
    model = make_model("bert")
    cache = run(model, data, tmp_path / "c", bert_masks=0, layers=[2])
    x = torch.from_numpy(data[0][:8].astype(np.int64))
    np.testing.assert_array_equal(cache[2][:8], model.features(x, [2], n_masks=0)[0].numpy())
    assert cache.manifest.seed is None


def test_masking_fields_are_one_rule_for_writer_and_lookups(tmp_path, data):
    # AR ignores a mask count; BERT records its seed and scheme only when it masks. Lookups
    # (the low-data study's reuse of full-split caches) read the same rule.
    assert masking("ar", 5, 3) == {"bert_masks": 0, "seed": None, "mask_scheme": None}
    assert masking("bert", 0, 3) == {"bert_masks": 0, "seed": None, "mask_scheme": None}
    assert masking("bert", 2, 3)["seed"] == 3 and masking("bert", 2, 3)["mask_scheme"]
    for kind, masks in (("ar", 2), ("bert", 0), ("bert", 2)):
        cache = run(make_model(kind), data, tmp_path / f"{kind}{masks}", bert_masks=masks,
                    seed=7, layers=[1])  # fmt: skip
        want = masking(kind, masks, 7)
        assert {k: getattr(cache.manifest, k) for k in want} == want


def test_float16_and_full_sequence(tmp_path, data):
    model = make_model()
    cache = run(model, data, tmp_path / "c", dtype="float16", full_sequence_layer=3)
    x = torch.from_numpy(data[0].astype(np.int64))
    pooled = batched(lambda lo, hi: model.features(x[lo:hi]).numpy(), N)
    assert cache[0].dtype == np.float16
    np.testing.assert_array_equal(cache[0], pooled[0].astype(np.float16))
    full = batched(lambda lo, hi: model.features(x[lo:hi], [3], pool=False)[0].numpy(), N, axis=0)
    assert cache.full_sequence_layer == 3 and cache.full_sequence.shape == (N, T, 32)
    assert (tmp_path / "c/ln_f.full.npy").is_file() and cache.full_sequence.dtype == np.float16
    np.testing.assert_array_equal(cache.full_sequence, full.astype(np.float16))


def test_other_sites(tmp_path, data):
    model = make_model()
    cache = run(model, data, tmp_path / "c", site="mlp_out", layers=[0, 2])
    assert cache.sites == ["blocks.0.mlp_out", "blocks.2.mlp_out"]
    assert (tmp_path / "c/blocks.2.mlp_out.npy").is_file()
    x = torch.from_numpy(data[0][:8].astype(np.int64))
    np.testing.assert_array_equal(cache[2][:8], model.features(x, [2], "mlp_out")[0].numpy())


# --------------------------------------------------------------------------- reading
def test_manifest_record_round_trips_the_file(tmp_path, data):
    """``manifest.json`` is a :class:`Manifest` written and read back: the same object, key
    for key; keys this version does not know survive; another format, another version or a
    missing field is one clear error."""
    cache = run(make_model("bert"), data, tmp_path / "c", bert_masks=2, full_sequence_layer=1)
    on_disk = json.loads((tmp_path / "c/manifest.json").read_text())
    m = Manifest.from_json(on_disk)
    assert m == cache.manifest and m.to_json() == on_disk
    assert m.full_sequence.file == "blocks.1.ln_1.full.npy" and m.full_sequence.shape == [N, T, 32]
    assert m.data_files()[-2:] == ["blocks.1.ln_1.full.npy", "labels.npy"]
    newer = {**on_disk, "note": "from a later writer"}
    assert Manifest.from_json(newer).to_json() == newer
    with pytest.raises(IGPTError, match="not an activation cache"):
        Manifest.from_json({**on_disk, "format": "igpt-eval-tokens"})
    with pytest.raises(IGPTError, match="version 2"):
        Manifest.from_json({**on_disk, "version": 2})
    broken = {k: v for k, v in on_disk.items() if k != "dim"}
    with pytest.raises(IGPTError, match="corrupt"):
        Manifest.from_json(broken, tmp_path / "c")


def test_manifest_and_reader(tmp_path, data):
    cache = run(make_model(), data, tmp_path / "c", inputs=CacheInputs(model="m", split="test"))
    m = json.loads((tmp_path / "c/manifest.json").read_text())
    assert m["format"] == "igpt-eval-activations" and m["complete"] is True
    assert m["rows_completed"] == N and m["shape"] == [N, 32] and m["pooling"] == "mean"
    assert set(m["checksums"]) == {*(f"{s}.npy" for s in m["sites"]), "labels.npy"}
    assert m["weights_hash"] == m["state_dict_hash"] == state_dict_hash(make_model())
    assert m["bert_masks"] == 0 and m["seed"] is None  # AR: no masks
    assert len(cache) == 4 and cache.n == N and cache.dim == 32 and cache.site == "ln_1"
    assert repr(cache) == (
        f"ActivationCache('{tmp_path / 'c'}', model=m, split=test, n={N}, d=32, "
        "layers 0..3 @ ln_1, float32, complete)"
    )
    assert np.array_equal(cache["ln_f"], cache[3]) and "blocks.1.ln_1" in cache
    with pytest.raises(IGPTError, match=r"layer 7 .* holds layers 0\.\.3"):
        cache[7]
    with pytest.raises(ValueError, match="read-only"):
        cache[0][0, 0] = 1.0
    assert ActivationCache.open(tmp_path / "c", verify=True).verify()


def test_tampered_and_truncated_files_are_caught(tmp_path, data):
    run(make_model(), data, tmp_path / "c")
    f = tmp_path / "c/blocks.2.ln_1.npy"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF
    f.write_bytes(bytes(raw))
    ActivationCache.open(tmp_path / "c")  # the structure is intact ...
    with pytest.raises(IGPTError, match=r"blocks\.2\.ln_1\.npy does not match its checksum"):
        ActivationCache.open(tmp_path / "c", verify=True)  # ... the checksum is not
    f.write_bytes(bytes(raw[:-100]))
    with pytest.raises(IGPTError, match=r"blocks\.2\.ln_1\.npy is truncated"):
        ActivationCache.open(tmp_path / "c")
    with pytest.raises(IGPTError, match="truncated"):  # and extraction will not reuse it
        run(make_model(), data, tmp_path / "c")
    with pytest.raises(IGPTError, match="no activation cache"):
        ActivationCache.open(tmp_path)


# --------------------------------------------------------------------------- reuse, refusal
def test_complete_cache_is_reused_without_a_forward(tmp_path, data):
    model = make_model()
    first = run(model, data, tmp_path / "c")
    calls = []
    real = model.features
    model.features = lambda *a, **k: calls.append(1) or real(*a, **k)
    again = run(model, data, tmp_path / "c", batch_size=16)  # batch size is not identity
    assert calls == [] and again.complete
    np.testing.assert_array_equal(again[1], first[1])


@pytest.mark.parametrize(
    "change, why",
    [
        ({"layers": [0, 1]}, "layers"),
        ({"dtype": "float16"}, "dtype"),
        ({"site": "resid_pre"}, "site"),
        ({"full_sequence_layer": 1}, "full-sequence"),
        ({"inputs": CacheInputs(dataset_fingerprint="other")}, "dataset fingerprint"),
        ({"inputs": CacheInputs(dataset_fingerprint="fp", palette_hash="p")}, None),  # not known
    ],
)
def test_mismatching_request_is_refused(tmp_path, data, change, why):
    model = make_model()
    run(model, data, tmp_path / "c", inputs=CacheInputs(dataset_fingerprint="fp"))
    kw = {"inputs": CacheInputs(dataset_fingerprint="fp"), **change}
    if why is None:
        run(model, data, tmp_path / "c", **kw)
        return
    with pytest.raises(IGPTError, match=f"another {why}.*--rebuild-cache") as e:
        run(model, data, tmp_path / "c", **kw)
    assert "\n" not in str(e.value)
    assert run(model, data, tmp_path / "c", overwrite=True, **kw).complete


def test_cache_of_another_model_is_refused_then_rebuilt(tmp_path, data):
    run(make_model(seed=0), data, tmp_path / "c", inputs=CacheInputs(palette_hash="p"))
    other = make_model(seed=1)
    with pytest.raises(IGPTError, match="another model weights.*pass --rebuild-cache"):
        run(other, data, tmp_path / "c", inputs=CacheInputs(palette_hash="p"))
    with pytest.raises(IGPTError, match="another palette"):
        run(make_model(seed=0), data, tmp_path / "c", inputs=CacheInputs(palette_hash="q"))
    rebuilt = run(other, data, tmp_path / "c", inputs=CacheInputs(palette_hash="p"), overwrite=True)
    x = torch.from_numpy(data[0][:8].astype(np.int64))
    np.testing.assert_array_equal(rebuilt[1][:8], other.features(x, [1])[0].numpy())


def test_a_folder_of_other_files_is_not_written_into(tmp_path, data):
    (tmp_path / "c").mkdir()
    (tmp_path / "c/notes.txt").write_text("mine")
    with pytest.raises(IGPTError, match="holds other files"):
        run(make_model(), data, tmp_path / "c")
    (tmp_path / "f").write_text("x")
    with pytest.raises(IGPTError, match="not a folder"):
        run(make_model(), data, tmp_path / "f")


# --------------------------------------------------------------------------- resume, failures
def test_disk_full_mid_way_leaves_a_resumable_cache(tmp_path, data, monkeypatch):
    model = make_model()
    ref = run(model, data, tmp_path / "ref")
    real, calls = cache_writer.write_json, []

    def full_disk(path, obj):
        calls.append(1)
        if len(calls) == 4:  # the manifest, two committed batches, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(cache_writer, "write_json", full_disk)
    with pytest.raises(IGPTError, match=r"disk full .* \(16 of 37 rows saved\)") as e:
        run(model, data, tmp_path / "c")
    assert "\n" not in str(e.value)
    monkeypatch.setattr(cache_writer, "write_json", real)
    part = ActivationCache.open(tmp_path / "c")
    assert not part.complete and part.n == 16 and part[0].shape == (16, 32)
    assert "incomplete, 16/37 rows" in repr(part)
    with pytest.raises(IGPTError, match="incomplete"):
        part.verify()
    with pytest.raises(IGPTError, match="batch size 8; rerun with --batch-size 8"):
        run(model, data, tmp_path / "c", batch_size=4)
    done = run(model, data, tmp_path / "c")
    for (_, a), (_, b) in zip(done, ref, strict=True):
        np.testing.assert_array_equal(a, b)


def test_interrupted_run_resumes_from_the_last_commit(tmp_path, data, monkeypatch):
    model = make_model("bert")
    ref = run(model, data, tmp_path / "ref", bert_masks=2)
    real, seen = model.features, []

    def dying(*a, **k):
        seen.append(1)
        if len(seen) == 7:  # batch 3 (two forwards a batch): the kill comes mid-batch
            raise KeyboardInterrupt
        return real(*a, **k)

    model.features = dying
    with pytest.raises(KeyboardInterrupt):
        run(model, data, tmp_path / "c", bert_masks=2)
    assert json.loads((tmp_path / "c/manifest.json").read_text())["rows_completed"] == 24
    model.features = real
    done = run(model, data, tmp_path / "c", bert_masks=2)
    for (_, a), (_, b) in zip(done, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    assert done.verify()


def test_second_writer_is_locked_out(tmp_path, data):
    with file_lock(tmp_path / "c/.lock"), pytest.raises(IGPTError, match="another igpt-eval"):
        run(make_model(), data, tmp_path / "c")


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"site": "attn"}, "unknown site"),
        ({"layers": [4]}, "out of range"),
        ({"site": "mlp_out", "layers": [3]}, "out of range"),
        ({"full_sequence_layer": 9}, "out of range"),
        ({"dtype": "bfloat16"}, "unknown dtype"),
        ({"batch_size": 0}, "batch size"),
    ],
)
def test_bad_settings(tmp_path, data, kw, msg):
    with pytest.raises(IGPTError, match=msg):
        run(make_model(), data, tmp_path / "c", **kw)
    assert not (tmp_path / "c").exists()


def test_bad_tokens(tmp_path):
    model = make_model()
    with pytest.raises(IGPTError, match="empty"):
        run(model, (np.zeros((0, T), np.uint16), np.zeros(0)), tmp_path / "c")
    with pytest.raises(IGPTError, match="positions"):
        run(model, (np.zeros((4, 16), np.uint16), np.zeros(4)), tmp_path / "c")
    with pytest.raises(IGPTError, match="labels"):
        run(model, (np.zeros((4, T), np.uint16), np.zeros(3)), tmp_path / "c")


def test_two_threads_compute_two_batches_at_once_with_the_same_bits(tmp_path, data, monkeypatch):
    """On the CPU each torch thread takes a batch of its own (one intra-op thread each): the
    cache is bit for bit the one-thread cache, and a kill mid-round resumes to it."""
    import threading

    model = make_model()
    ref = run(model, data, tmp_path / "ref")  # one thread (this module's default)
    torch.set_num_threads(2)
    assert cache_writer.cpu_workers("cpu") == 2
    names, real = set(), cache_writer._batch

    def spy(*a, **k):
        names.add(threading.current_thread().name)
        assert torch.get_num_threads() == 1  # each batch on one thread
        return real(*a, **k)

    monkeypatch.setattr(cache_writer, "_batch", spy)
    two = run(model, data, tmp_path / "two")
    assert len(names) == 2 and torch.get_num_threads() == 2  # restored after
    for (_, a), (_, b) in zip(two, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    calls = []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # in the second round (batches 2 and 3)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cache_writer, "_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        run(model, data, tmp_path / "c")
    assert json.loads((tmp_path / "c/manifest.json").read_text())["rows_completed"] == 16
    monkeypatch.setattr(cache_writer, "_batch", real)
    done = run(model, data, tmp_path / "c")
    for (_, a), (_, b) in zip(done, ref, strict=True):
        np.testing.assert_array_equal(a, b)


def test_extract_settings_name_the_managed_cache_stably():
    """The folder name of a managed cache is a hash of the settings: pinned, because a change
    to it would orphan every cache users already hold (these are the names of before the
    settings became one object)."""
    from igpt_eval.defaults import DEFAULT_SITE

    assert ExtractSettings().site == DEFAULT_SITE
    s = ExtractSettings(compute="float32", bert_masks=0)
    assert s.tag() == "0dc2c1" and s.tag(rows=5000) == "eb02cc"
    assert s.replace(batch_size=7).tag() == s.tag()  # the batch size stores the same bits
    assert s.replace(layers=[3, 1, 2]).tag() == s.replace(layers=(1, 2, 3)).tag()
    assert s.replace(dtype="float16").tag() != s.tag()
    assert ExtractSettings(layers=[1, 2]).layers == (1, 2)  # kept hashable
    with pytest.raises(TypeError, match="no extraction setting named 'sites'"):
        s.replace(sites=[1])


def test_data_source_of():
    from igpt_eval.data import DataSource

    assert DataSource.of("digits") == DataSource("digits")
    assert DataSource.of(None) == DataSource()
    src = DataSource("digits", split_seed=3)
    assert DataSource.of(src) is src
    with pytest.raises(IGPTError, match="registry name or a DataSource"):
        DataSource.of(3)
