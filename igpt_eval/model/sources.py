"""Where a model comes from: one parser for every way a user can name one.

Wherever igpt-eval takes a model it takes any of

- an igpt-eval checkpoint folder (``model.safetensors`` + our ``config.json``);
- a local Hugging Face ImageGPT folder (``config.json`` with ``model_type: imagegpt``,
  weights as safetensors or a pickled ``pytorch_model.bin``);
- ``hf:OWNER/NAME[@REVISION]``: a Hub repository, resolved by ``huggingface_hub`` into its
  own cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``).
  With ``HF_HUB_OFFLINE=1``, or when the Hub cannot be reached, only the cache is read.

:func:`resolve_model` turns the text into a :class:`ModelSource` (fetching Hub files when it
must); :func:`load_source` reads it into an :class:`~igpt_eval.model.igpt.IGPT`, its palette
and the identity that activation caches record (repository, resolved commit, weights hash).
Nothing here ever unpickles: a ``.bin`` is read with ``torch.load(weights_only=True)`` and
accepted only as a flat mapping of names to tensors (:func:`igpt_eval.model.hf.read_bin`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from igpt_eval.data.palette import Palette
from igpt_eval.defaults import MODELS_DIR
from igpt_eval.errors import IGPTError
from igpt_eval.io import file_hash, read_json
from igpt_eval.model.checkpoint import CONFIG, load_model, load_palette
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.hf import config_from_hf, from_hf, hf_palette_centres, hf_weight_files
from igpt_eval.model.record import RunRecord

HUB_PREFIX = "hf:"
CHECKPOINT, HF_FOLDER, HUB = "checkpoint", "hf-folder", "hub"
#: The Hub files a model needs, in the order they are tried: the first weights found win.
HUB_CONFIGS = ("config.json", "preprocessor_config.json")
HUB_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class ModelSource:
    """A model's files on disk and where they came from.

    ``kind`` is ``checkpoint``, ``hf-folder`` or ``hub``; ``path`` the folder read (for the
    Hub: the cached snapshot); ``name`` its short name (the folder's, the repository's);
    ``spec`` what the user typed. Hub sources also carry ``repo``, the ``revision`` asked
    for, and the ``commit`` it resolved to.
    """

    kind: str
    path: Path
    name: str
    spec: str
    repo: str | None = None
    revision: str | None = None
    commit: str | None = None
    weight_files: tuple[Path, ...] = field(default=(), compare=False)

    @property
    def is_checkpoint(self) -> bool:
        return self.kind == CHECKPOINT

    def weights_hash(self) -> str:
        """SHA-256 (first 16 hex) of each weight file, in name order, joined by ``+``;
        computed once per file version (iGPT-L's 5 GB take seconds to hash)."""
        missing = [f for f in self.weight_files if not f.is_file()]
        if missing:
            raise IGPTError(
                f"{self.path} has no {missing[0].name}: the model's weights are missing"
            )
        stamps = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in self.weight_files)
        return _files_hash(stamps)

    @property
    def dataset(self) -> str | None:
        """The dataset its pretraining run read (``run.json``), ``None`` when unknown (a
        Hugging Face folder, a checkpoint without a run)."""
        return RunRecord.read(self.path).dataset if self.is_checkpoint else None

    @property
    def label(self) -> str:
        """What result tables and default output folders call the model: its name and the
        first 8 hex of its weights' hash (``fmnist-ar-1a2b3c4d``), so that two folders of
        one name (``x/model``, ``y/model``) are never mistaken for each other."""
        return f"{self.name}-{self.weights_hash()[:8]}"


@functools.lru_cache(maxsize=64)
def _files_hash(stamps: tuple[tuple[str, int, int], ...]) -> str:
    """The joined hashes of files named with their size and modification time (so a file
    rewritten in place is hashed again)."""
    return "+".join(file_hash(name) for name, _, _ in stamps)


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """``hf:OWNER/NAME[@REVISION]`` → ``(OWNER/NAME, REVISION or None)``."""
    body = spec.removeprefix(HUB_PREFIX)
    repo, sep, revision = body.partition("@")
    owner, slash, name = repo.partition("/")
    if not (owner and slash and name) or "/" in name or (sep and not revision):
        raise IGPTError(f"a Hub model is hf:OWNER/NAME[@REVISION], e.g. hf:openai/imagegpt-small; "
                        f"got {spec!r}")  # fmt: skip
    return repo, revision or None


def model_name(spec: str | os.PathLike) -> str:
    """The short name of a model spec without resolving it (``hf:openai/imagegpt-small@x``
    → ``imagegpt-small``; a folder → its name): for default output folders."""
    text = os.fspath(spec)
    if text.startswith(HUB_PREFIX):
        return parse_hub_spec(text)[0].split("/")[-1]
    return Path(text).expanduser().resolve().name


def default_folder(spec: str | os.PathLike) -> str:
    """A folder name for a model's outputs that no other weights share: its
    :attr:`ModelSource.label`, so that ``x/model`` and ``y/model`` do not write into one
    place."""
    return resolve_model(spec).label


def resolve_model(spec: str | os.PathLike | ModelSource) -> ModelSource:
    """The :class:`ModelSource` that ``spec`` names (see the module docstring); every way it
    can fail is one :class:`IGPTError`."""
    if isinstance(spec, ModelSource):
        return spec
    text = os.fspath(spec)
    if text.startswith(HUB_PREFIX):
        return _from_hub(text)
    path = Path(text).expanduser()
    if not path.exists():
        where = (
            "the shipped models live in models/ of a source checkout; set IGPT_EVAL_MODELS"
            if path.parent.resolve() == MODELS_DIR.resolve()
            else "give a checkpoint folder, a Hugging Face ImageGPT folder, or hf:OWNER/NAME"
        )
        raise IGPTError(f"no model at {path} ({where})")
    if not path.is_dir():
        raise IGPTError(f"{path} is a file; a model is a folder (or hf:OWNER/NAME)")
    return _from_folder(path, text)


def _from_folder(path: Path, spec: str) -> ModelSource:
    """A local folder: an HF ImageGPT folder when its ``config.json`` says so, else ours."""
    cfg = path / "config.json"
    if not cfg.is_file():
        raise IGPTError(f"{path} has no config.json: neither an igpt-eval checkpoint nor a "
                        "Hugging Face ImageGPT folder")  # fmt: skip
    data = read_json(cfg)
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type is None:
        return ModelSource(CHECKPOINT, path, path.name, spec,
                           weight_files=(path / "model.safetensors",))  # fmt: skip
    if model_type != "imagegpt":
        raise IGPTError(f"{path} holds a Hugging Face {model_type!r} model, not ImageGPT")
    return ModelSource(HF_FOLDER, path, path.name, spec, weight_files=hf_weight_files(path))


# ------------------------------------------------------------------------------- the Hub
def hub_cache() -> Path:
    """The Hub cache ``huggingface_hub`` uses, read from the environment at each call."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = (
        os.environ.get("HF_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the cache only (read at each call)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _from_hub(spec: str) -> ModelSource:
    repo, revision = parse_hub_spec(spec)
    try:
        import huggingface_hub as hub
        from huggingface_hub import errors
    except ImportError:
        raise IGPTError(f"{spec} needs huggingface_hub: pip install 'igpt-eval[hf]'") from None
    offline = hub_offline()
    where = f"{repo}" + (f"@{revision}" if revision else "")
    kw = dict(repo_id=repo, revision=revision, cache_dir=hub_cache(), local_files_only=offline)
    fetch_hint = (
        f"hf:{where} is not in the Hugging Face cache ({hub_cache()})"
        + (" and HF_HUB_OFFLINE is set" if offline else " and the Hub could not be reached")
        + f"; fetch it first where there is network: hf download {repo}"
        + (f" --revision {revision}" if revision else "")
        + " (then copy that cache here, or point HF_HOME at it)"
    )
    try:
        config = Path(hub.hf_hub_download(filename="config.json", **kw))
        folder = config.parent
        for name in HUB_CONFIGS[1:]:
            _optional(hub, errors, folder, name, kw)
        weights = _hub_weights(hub, errors, folder, kw)
    except errors.RepositoryNotFoundError:
        raise IGPTError(f"no Hub repository {repo} (or it is private: log in first)") from None
    except errors.RevisionNotFoundError:
        raise IGPTError(f"{repo} has no revision {revision!r}") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
        raise IGPTError(fetch_hint) from None
    except OSError as e:
        if not _network_error(e):
            raise
        raise IGPTError(fetch_hint) from None
    except errors.HfHubHTTPError as e:
        raise IGPTError(f"the Hub refused hf:{where}: {str(e).splitlines()[0]}") from None
    src = _from_folder(folder, spec)
    if src.kind != HF_FOLDER:
        raise IGPTError(f"hf:{where} is no Hugging Face ImageGPT repository")
    return ModelSource(HUB, folder, repo.split("/")[-1], spec, repo=repo, revision=revision,
                       commit=folder.name, weight_files=weights)  # fmt: skip


def _network_error(e: OSError) -> bool:
    """An OSError that means "the Hub cannot be reached" (not a local disk problem)."""
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("connect", "timeout", "timed out", "resolve", "network"))


def _optional(hub, errors, folder: Path, name: str, kw: dict) -> Path | None:
    """A Hub file that a repository may lack (``None`` then)."""
    if (folder / name).is_file():
        return folder / name
    if kw["local_files_only"]:
        return None
    try:
        return Path(hub.hf_hub_download(filename=name, **kw))
    except errors.EntryNotFoundError:
        return None


def _hub_weights(hub, errors, folder: Path, kw: dict) -> tuple[Path, ...]:
    """The weight files of a Hub snapshot, fetching only the first kind the repository has
    (safetensors, sharded safetensors, then the pickled ``pytorch_model.bin``)."""
    for name in HUB_WEIGHTS:
        f = _optional(hub, errors, folder, name, kw)
        if f is None:
            continue
        if name.endswith(".index.json"):
            shards = sorted(set((read_json(f).get("weight_map") or {}).values()))
            return tuple(Path(hub.hf_hub_download(filename=s, **kw)) for s in shards)
        return (f,)
    if kw["local_files_only"]:
        raise errors.LocalEntryNotFoundError(f"no weights of {kw['repo_id']} in the cache")
    raise IGPTError(f"hf:{kw['repo_id']} has no model weights ({', '.join(HUB_WEIGHTS)})")


# ------------------------------------------------------------------------------- loading
def source_config(source: ModelSource) -> IGPTConfig:
    """The shape of a source's model, read from its config alone (no weights loaded)."""
    if source.is_checkpoint:
        return IGPTConfig.load(source.path / CONFIG)
    return config_from_hf(read_json(source.path / "config.json"), has_bias=False, n_classes=0)


def source_palette(source: ModelSource) -> Palette | None:
    """A source's palette: ``palette.npy`` of a checkpoint, the ``clusters`` of an HF
    folder's ``preprocessor_config.json``; ``None`` when it has none."""
    if source.is_checkpoint:
        return load_palette(source.path)
    centres = hf_palette_centres(source.path)
    return None if centres is None else Palette(centres)


@dataclass
class ModelIdentity:
    """What the results and caches of a loaded model record about it."""

    model: str  # what was asked for (a folder, hf:NAME), or what an in-memory model is
    name: str | None = None  # its label (name and weights hash): the results' model column
    weights_hash: str | None = None  # of its weight files (a random-weights twin: init-...)
    run: RunRecord = field(default_factory=RunRecord)  # the run that trained it (empty: none)
    hub: dict = field(default_factory=dict)  # repo, revision (asked), commit (resolved)

    def data(self, dataset: str | None, split_seed: int | None = None) -> tuple[str, int]:
        """``(dataset, split seed)`` the model is read on: those given, else those of the run
        that trained it (the seed: 0 for a model not trained here)."""
        dataset = dataset or self.run.dataset
        if dataset is None:
            raise IGPTError("no dataset given and the model folder has no run.json naming one")
        return dataset, self.run.data_seed if split_seed is None else split_seed


def load_source(source: ModelSource, device="cpu"):
    """``(IGPT, Palette or None, ModelIdentity)`` of a source, the model on ``device``: the
    identity names what was asked for, its weight files' hash, the Hub repository and
    commit when it came from there, and (a checkpoint's) the run that trained it."""
    # The model first: a missing or broken weights file is its one clear error.
    if source.is_checkpoint:
        model, palette = load_model(source.path, device), load_palette(source.path)
        run = RunRecord.read(source.path)
    else:
        model = from_hf(source.path).to(device)
        palette, run = getattr(model, "palette", None), RunRecord()
    hub = {}
    if source.kind == HUB:
        hub = dict(repo=source.repo, revision=source.revision, commit=source.commit)
    return model, palette, ModelIdentity(source.spec, source.label, source.weights_hash(), run, hub)
