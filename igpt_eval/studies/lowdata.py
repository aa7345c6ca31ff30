"""The paper's low-data comparison: linear probe vs fine-tuning vs raw pixels, over K labels
per class and several seeds (Chen et al. 2020, the low-data CIFAR-10 table).

For every K and seed, :func:`~igpt_eval.data.subsets.lowdata_split` draws K labelled
training images per class and holds out a quarter of them (at most 20 per class). Only those
K labels per class are used to choose anything, so the numbers are honest low-data numbers:

- **linear probe**: the layer is chosen on the held-out part by a quick pass over every
  layer (coarse C grid, L-BFGS capped at ``select_iter`` iterations), unless full-data probe
  results are given (``probe_results``: the layer selected on the standard val split there,
  as in the paper, which picked its probe layer on full data). On that layer the L-BFGS
  protocol of :func:`igpt_eval.probes.protocol.probe_lbfgs` chooses C on the held-out part
  and refits on all K labels per class. Features come from the model's full-split activation
  caches when complete ones exist (rows indexed, nothing re-extracted); otherwise the rows
  every draw needs are extracted once into a small cache, never once per K.
- **fine-tuning**: :func:`igpt_eval.train.finetune_runs.run_finetune` on the training part, early
  stopping on the held-out part (no refit: fine-tuning is the expensive step).
- **raw pixels**: the same probe protocol on the pixels (scaled to [0, 1]).

All three are scored on one fixed, stratified test subset (``test_images``; the full test
set with 0) so they compare like for like. Rows carry ``method``, ``labels_per_class`` and
(probes) ``best_layer``; :mod:`igpt_eval.reporting.lowdata` turns them into the table and figure.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

from igpt_eval import defaults
from igpt_eval.cache import ActivationCache, ExtractSettings, read_manifest, write_cache
from igpt_eval.cache.manifest import CacheInputs, masking
from igpt_eval.data import load_dataset, load_tokens
from igpt_eval.data.source import DataSource
from igpt_eval.data.subsets import Labelled, LabelledSplits, labelled_subset, lowdata_split
from igpt_eval.errors import IGPTError
from igpt_eval.io import array_hash, read_json, write_json
from igpt_eval.model.loading import open_model, state_dict_hash
from igpt_eval.model.sites import site_name
from igpt_eval.model.sources import ModelIdentity
from igpt_eval.names import RAW_PIXELS, ModelKind
from igpt_eval.probes.protocol import Features, Protocol, probe_lbfgs
from igpt_eval.results import load_results, probe_choice, row, save_results, to_frame
from igpt_eval.studies.settings import LowDataConfig
from igpt_eval.train.finetune_runs import FinetuneRecord, run_finetune
from igpt_eval.train.settings import FinetuneConfig

METHODS = ("linear probe", "fine-tune", "raw pixels")


def lowdata_study(
    models,
    dataset: str | DataSource | None,
    out,
    cfg: LowDataConfig | None = None,
    *,
    probe_results=None,
    cache_root=None,
):
    """Run the study for each checkpoint folder in ``models``; returns the tidy results,
    also written (after every run, so partial progress is on disk) to ``out/results.*``.
    ``dataset`` is a name or a :class:`~igpt_eval.data.source.DataSource` (default: the
    first model's run's dataset, each model's run's split seed); ``cache_root`` holds the
    activation caches (and the token caches, unless the source names a folder for them).

    Everything is checked before ``out`` is touched. Re-running the same study in the same
    ``out`` continues it: finished fine-tuning runs are read back, an interrupted one resumes.
    It may change the number of seeds (``cfg.seeds``) and nothing else: more seeds extend
    the study, the earlier seeds' runs read back.
    """
    cfg = cfg or LowDataConfig()
    cfg.validate()
    out = Path(out)
    source = DataSource.of(dataset)
    cache_root = Path(cache_root) if cache_root is not None else defaults.cache_root()
    tok_root = Path(source.token_cache or cache_root / "tokens")
    # (name, model, palette, identity): the name is the folder's or the Hub repository's.
    loaded = [open_model(m, device=cfg.device) for m in models]
    opened = [(ident.name, net, pal, ident) for net, pal, ident in loaded]
    names = [name for name, *_ in opened]
    if len(set(names)) < len(names):
        raise IGPTError(f"two models share a folder name ({names}); results would collide")
    dataset = source.name or opened[0][3].run.dataset
    if dataset is None:
        raise IGPTError("no --dataset given and the model folder has no run.json naming one")
    best_layers = _layers_from_results(probe_results, names)
    data, draws = {}, {}
    for name, net, _palette, ident in opened:
        L = net.config.n_layer
        for layer in (cfg.layer, best_layers.get(name)):
            if layer is not None and not 0 <= layer <= L:
                raise IGPTError(f"layer {layer} is out of range: {name} has layers 0..{L}")
        _, seed = ident.data(dataset, source.split_seed)
        key = (net.config.n_px, seed)
        if key not in data:
            tr, te = (
                load_dataset(dataset, split=s, n_px=key[0], data_dir=source.data_dir, seed=seed)
                for s in ("train", "test")
            )
            if len(np.unique(tr.labels)) < 2:
                raise IGPTError(f"{dataset} has fewer than two classes: it has no labels")
            data[key] = (tr, te, _test_rows(te.labels, cfg.test_images))
            # Every draw up front: a K too large for a class fails before any work.
            draws[key] = {
                (s, k): lowdata_split(tr.labels, k, s) for s in range(cfg.seeds) for k in cfg.ks
            }
    settings = {
        "models": [str(m) for m in models],
        "dataset": dataset,
        "config": _jsonable(dataclasses.asdict(cfg)),
        "best_layers": best_layers,
    }
    _guard(out, settings)

    rows: list[dict] = []

    def flush():
        df = to_frame(rows)
        save_results(df, out)
        return df

    for (n_px, seed), (tr, te, test_rows) in data.items():
        pix_done = set()
        for name, net, palette, ident in opened:
            if (net.config.n_px, seed) != (n_px, seed):
                continue
            t_tok = load_tokens(tr, palette, tok_root)
            e_tok = load_tokens(te, palette, tok_root)
            need = np.unique(np.concatenate([np.r_[a, b] for a, b in draws[(n_px, seed)].values()]))
            feats = _features(
                net, palette, ident, (tr, t_tok, need), (te, e_tok, test_rows), cfg,
                best_layers.get(name), cache_root,
            )  # fmt: skip
            meta = dict(model=name, model_kind=ModelKind.TRAINED, objective=net.config.objective,
                        dataset=dataset)  # fmt: skip
            for (s, k), (a, b) in draws[(n_px, seed)].items():
                extra = dict(labels_per_class=k, seed=s)
                rows += _probe(feats, a, b, tr.labels, te.labels[test_rows], cfg, meta, extra,
                               best_layers.get(name))  # fmt: skip
                if (s, k) not in pix_done:
                    pix_done.add((s, k))
                    rows += _pixels(tr, te, test_rows, a, b, cfg, dataset, extra)
                flush()
                if cfg.finetune:
                    m = _Opened(net, palette, ident, t_tok, e_tok, meta)
                    run_dir = out / "finetune" / name / f"k{k}-s{s}"
                    rows += _finetune(m, (tr, te, test_rows), (a, b), extra, cfg, run_dir)
                    flush()
    return flush()


# ------------------------------------------------------------------ pieces
def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _guard(out: Path, settings: dict) -> None:
    """A new study needs an empty (or absent) folder; the same study may continue, with
    more (or fewer) seeds: a draw depends on its K and seed alone, so the finished runs of
    the seeds both share are read back, not run again."""
    f = out / "lowdata.json"
    if f.is_file():
        old = read_json(f)
        if _but_seeds(old) != _but_seeds(settings):
            raise IGPTError(f"{out} holds a low-data study with other settings; choose a new --out")
    elif out.exists() and any(out.iterdir()):
        raise IGPTError(f"{out} already holds files; choose a new --out")
    write_json(f, settings)


def _but_seeds(settings: dict) -> dict:
    return {**settings, "config": {k: v for k, v in settings["config"].items() if k != "seeds"}}


def _layers_from_results(paths, names: list[str]) -> dict:
    """``{model name: layer}`` chosen on validation in full-data probe results files."""
    if not paths:
        return {}
    df = __import__("pandas").concat([load_results(p) for p in paths], ignore_index=True)
    return {name: probe_choice(df, name)[0] for name in names}


def _find_cache(root: Path, want: dict, layers):
    """A complete activation cache under ``root/activations`` whose manifest has every field
    of ``want`` (the model, the split, and each extraction setting the study would write
    with) and holds ``layers``; None when there is none. Only the rows may differ: a
    full-split cache serves any subset of them."""
    for d in sorted((root / "activations").glob("*/")):
        try:
            m = read_manifest(d)
        except IGPTError:
            continue
        if not m or not m.get("complete") or any(m.get(k) != v for k, v in want.items()):
            continue
        if set(layers) <= set(m.get("layers", [])):
            return ActivationCache.open(d)
    return None


def _features(net, palette, ident, train, test, cfg, layer, root) -> dict:
    """``{"train": (G, N, d) for the ``need`` rows, "test": (G, n_test, d), layers, sites,
    "index": row -> position}`` from full-split caches or one extraction of those rows."""
    L = net.config.n_layer
    layers = list(range(L + 1)) if layer is None else [layer]
    h = state_dict_hash(net)
    # The settings this study extracts with: a cache made with any other is not reused.
    masks = masking(net.config.objective, defaults.BERT_MASKS, seed=0)
    settings = dict(site="ln_1", dtype="float32", compute="bfloat16" if cfg.bf16 else "float32",
                    bert_masks=masks["bert_masks"], seed=masks["seed"])  # fmt: skip
    out = {}
    for name, (ds, tok, rows) in (("train", train), ("test", test)):
        want = dict(settings, state_dict_hash=h, dataset_fingerprint=ds.fingerprint,
                    palette_hash=palette.hash)  # fmt: skip
        cache = _find_cache(root, want, layers)
        if cache is not None:
            X = np.stack([np.asarray(cache[x])[rows] for x in layers])
        else:
            tag = f"{ds.fingerprint}-m{h[:8]}-rows{_rows_hash(rows)}"
            cache = write_cache(
                net, np.asarray(tok.tokens[rows]), ds.labels[rows],
                root / "activations" / f"lowdata-{name}-{tag}",
                ExtractSettings(layers=tuple(layers), **{k: settings[k] for k in
                                ("site", "dtype", "bert_masks", "compute")}),
                inputs=CacheInputs(model=ident.model, weights_hash=ident.weights_hash,
                                   palette_hash=palette.hash, dataset=ds.name, split=ds.split,
                                   dataset_fingerprint=f"{ds.fingerprint}:rows{_rows_hash(rows)}"),
            )  # fmt: skip
            X = np.stack([np.asarray(cache[x]) for x in layers])
        out[name] = X.astype(np.float32)
    out["index"] = {int(r): i for i, r in enumerate(train[2])}
    out["layers"], out["sites"] = layers, [site_name(x, "ln_1", L) for x in layers]
    return out


def _test_rows(labels: np.ndarray, n: int) -> np.ndarray:
    """The fixed test subset: ``n`` rows, the same number from every class (seed 0), or
    every row when ``n`` is 0 or covers the whole set."""
    classes, counts = np.unique(labels, return_counts=True)
    if n == 0 or n >= len(labels):
        return np.arange(len(labels))
    return labelled_subset(labels, int(min(counts.min(), max(1, n // len(classes)))), seed=0)


def _rows_hash(rows: np.ndarray) -> str:
    return array_hash(np.asarray(rows, dtype=np.int64))[:10]


def _probe(feats, tr_rows, va_rows, labels, y_test, cfg, meta, extra, fixed) -> list[dict]:
    """The linear probe of one draw: layer choice (unless ``fixed``), then the protocol."""
    idx = feats["index"]
    take = lambda r: feats["train"][:, [idx[int(i)] for i in r]]  # noqa: E731
    Xa, Xb, Xt = take(tr_rows), take(va_rows), feats["test"]
    ya, yb = labels[tr_rows], labels[va_rows]
    layers, sites = feats["layers"], feats["sites"]
    g = 0
    if fixed is None and len(layers) > 1:  # quick pass over every layer, on held-out labels
        quick = probe_lbfgs(
            Features(Xa, ya), Features(Xb, yb), Features(Xt[:, :1], y_test[:1]), layers,
            meta=meta, sites=sites, protocol=Protocol(Cs=10.0 ** np.arange(-2, 3), refine=False,
            max_iter=cfg.select_iter, device=cfg.device, n_boot=1),
        ).rows  # fmt: skip
        val = [(r["value"], -layers.index(r["layer"])) for r in quick
               if r["split"] == "val" and r["metric"] == "accuracy" and r["selected"]]  # fmt: skip
        g = -max(val)[1]  # best held-out accuracy; ties go to the shallower layer
    t0 = time.perf_counter()
    rows = probe_lbfgs(
        Features(Xa[g : g + 1], ya), Features(Xb[g : g + 1], yb), Features(Xt[g : g + 1], y_test),
        [layers[g]], meta=meta, sites=[sites[g]],
        protocol=Protocol(max_iter=cfg.probe_iter, device=cfg.device, seed=extra["seed"]),
    ).rows  # fmt: skip
    sec = time.perf_counter() - t0
    return [row(r, extra, method="linear probe", best_layer=True, study_seconds=sec)
            for r in rows]  # fmt: skip


def _pixels(tr, te, test_rows, tr_rows, va_rows, cfg, dataset, extra) -> list[dict]:
    """The raw-pixel baseline: the probe protocol on pixels scaled to [0, 1]."""

    def X(images, rows):
        return (images[rows].reshape(len(rows), -1).astype(np.float32) / 255.0)[None]

    rows = probe_lbfgs(
        Features(X(tr.images, tr_rows), tr.labels[tr_rows]),
        Features(X(tr.images, va_rows), tr.labels[va_rows]),
        Features(X(te.images, test_rows), te.labels[test_rows]),
        [0], meta=dict(model=RAW_PIXELS, model_kind=ModelKind.CONTROL, objective="none",
                      dataset=dataset),
        sites=["pixels"],
        protocol=Protocol(max_iter=cfg.probe_iter, device=cfg.device, seed=extra["seed"]),
    ).rows  # fmt: skip
    return [row(r, extra, method="raw pixels", best_layer=True) for r in rows]


@dataclasses.dataclass
class _Opened:
    """One model of the study, with its tokenised splits and result columns."""

    net: object
    palette: object
    ident: ModelIdentity
    train_tokens: object
    test_tokens: object
    meta: dict


def _finetune_config(cfg: LowDataConfig, n_train: int, seed: int) -> FinetuneConfig:
    """The fine-tuning settings of one draw: the budget scales with its training part."""
    steps = cfg.steps(n_train)
    return FinetuneConfig(
        steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, objective=cfg.objective,
        layer=cfg.layer, augment=cfg.augment, eval_every=max(cfg.eval_every, steps // 20),
        patience=cfg.patience, bf16=cfg.bf16, seed=seed, device=cfg.device,
    )  # fmt: skip


def _finetune(
    m: _Opened, split, draw, extra: dict, cfg: LowDataConfig, run_dir: Path
) -> list[dict]:
    """One fine-tuning run on ``draw = (train rows, held-out rows)`` of ``split = (train
    dataset, test dataset, test rows)`` (read back when it already finished, resumed when
    interrupted)."""
    (tr, te, test_rows), (tr_rows, va_rows) = split, draw
    done = run_dir / "results.parquet"
    if done.is_file():
        df = load_results(done)
    else:
        ft = _finetune_config(cfg, len(tr_rows), extra["seed"])
        full = Labelled(m.train_tokens.tokens, tr.labels, tr.images if cfg.augment else None)
        test = Labelled(np.asarray(m.test_tokens.tokens[test_rows]), te.labels[test_rows])
        data = LabelledSplits(full.take(tr_rows), full.take(va_rows), test,
                              n_classes=int(tr.labels.max()) + 1)  # fmt: skip
        record = FinetuneRecord(m.meta, dict(weights_hash=m.ident.weights_hash, **extra))
        df = run_finetune(m.net, m.palette, data, ft, run_dir, record=record,
                          resume=(run_dir / "finetune.json").is_file())  # fmt: skip
        if not cfg.keep_checkpoints:
            shutil.rmtree(run_dir / "resume", ignore_errors=True)
            (run_dir / "model.safetensors").unlink(missing_ok=True)
    return [row(r, extra, method="fine-tune") for r in df.to_dict("records")]
