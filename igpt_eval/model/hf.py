"""Import and export of Hugging Face ImageGPT checkpoints (docs/design.md, "Hugging Face").

HF differs from us in layout only:

- its vocabulary is k+1: SOS is ``wte`` row k (the last row), and the caller prepends it;
  we keep ``sos`` as its own vector and prepend it ourselves;
- ``c_attn`` is a Conv1D ``[d, 3d]`` (in × out) holding q|k|v; ``c_proj``, ``c_fc`` are
  Conv1D ``[in, out]`` too: the transposes of our ``nn.Linear`` weights;
- ``lm_head.weight [k, d]`` is our ``wtet``; ``score.weight [classes, d]`` is our ``wclf``;
  ``ln_*.weight`` are our gains ``g``;
- it always has linear biases (zero in OpenAI's converted weights).

Reading and writing need no ``transformers``: checkpoints are ``config.json`` plus
safetensors, or (what the Hub's ``openai/imagegpt-*`` main branches hold) a pickled
``pytorch_model.bin``. Those are never unpickled as such: :func:`read_bin` reads them with
``torch.load(weights_only=True)``, whose unpickler builds tensors and plain containers only,
and then accepts nothing but a flat mapping of names to tensors.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from igpt_eval.data.palette import Palette
from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write, read_json, write_json
from igpt_eval.model.checkpoint import check_state_dict
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.igpt import IGPT

# (our suffix, HF suffix, transpose) for the per-block weights.
_BLOCK_MAP = [
    ("ln_1.g", "ln_1.weight", False),
    ("ln_2.g", "ln_2.weight", False),
    ("attn.qkv.weight", "attn.c_attn.weight", True),
    ("attn.qkv.bias", "attn.c_attn.bias", False),
    ("attn.proj.weight", "attn.c_proj.weight", True),
    ("attn.proj.bias", "attn.c_proj.bias", False),
    ("mlp.fc.weight", "mlp.c_fc.weight", True),
    ("mlp.fc.bias", "mlp.c_fc.bias", False),
    ("mlp.proj.weight", "mlp.c_proj.weight", True),
    ("mlp.proj.bias", "mlp.c_proj.bias", False),
]


# ---------------------------------------------------------------------------- import
def hf_weight_files(path: Path) -> tuple[Path, ...]:
    """The weight files of an HF folder: its safetensors (one or the shards), else its
    pickled ``pytorch_model*.bin``; an :class:`IGPTError` when it has neither."""
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = tuple(sorted(path.glob(pattern)))
        if files:
            return files
    raise IGPTError(f"{path} has no weights (no .safetensors, no pytorch_model.bin)")


def _read_hf_folder(path: Path) -> tuple[dict, dict, np.ndarray | None]:
    """(config dict, state dict, palette centres or None) from an HF checkpoint folder."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise IGPTError(f"{path} is not a Hugging Face checkpoint folder (no config.json)")
    hf_cfg = read_json(cfg_file)
    if not isinstance(hf_cfg, dict) or hf_cfg.get("model_type") != "imagegpt":
        got = hf_cfg.get("model_type") if isinstance(hf_cfg, dict) else None
        raise IGPTError(f"{path} is not an ImageGPT checkpoint (model_type {got!r})")
    state = read_weights(hf_weight_files(path))
    return hf_cfg, state, hf_palette_centres(path)


def hf_palette_centres(path: Path) -> np.ndarray | None:
    """The colour clusters ``[k, 3]`` of an HF folder's ``preprocessor_config.json`` (in
    [-1, 1], our palette's scale), or ``None`` when it has none."""
    pre = path / "preprocessor_config.json"
    if not pre.is_file():
        return None
    clusters = read_json(pre).get("clusters")
    return None if clusters is None else np.asarray(clusters, dtype=np.float32)


def read_bin(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a pickled ``.bin`` state dict, read without running any code.

    ``torch.load(weights_only=True)`` refuses a pickle that would call anything but the
    tensor and container constructors it allows (a hostile ``__reduce__`` never runs); what
    it returns must then be a mapping of names to tensors, nothing else."""
    try:
        try:  # memory-mapped: a 5 GB file is not read twice
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except Exception as e:  # noqa: BLE001 - whatever the unpickler refused, the answer is no
        why = _refusal(e)
        raise IGPTError(f"{path} was refused: it is not a plain file of tensors ({why})") from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        what = type(obj).__name__
        if isinstance(obj, dict):
            bad = next(
                k
                for k, v in obj.items()
                if not (isinstance(k, str) and isinstance(v, torch.Tensor))
            )
            what = f"a mapping whose entry {bad!r} is no tensor"
        raise IGPTError(f"{path} holds {what}, not a mapping of names to tensors; refused")
    return obj


def _refusal(e: Exception) -> str:
    """What torch's unpickler objected to, without its boilerplate (which suggests rerunning
    with ``weights_only=False``: exactly what must never happen to an untrusted file)."""
    skip = ("weights only load failed", "check the documentation", "re-running")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln.split("use case:")[-1].strip() for ln in lines if not ln.lower().startswith(skip)]
    text = " ".join(ln for ln in lines if ln and not ln.startswith("WeightsUnpickler error"))
    return (text or type(e).__name__)[:200]


def read_weights(files) -> dict[str, torch.Tensor]:
    """The state dict of an HF folder's weight files (safetensors or ``.bin``, one file or
    the shards of a sharded checkpoint)."""
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".bin":
            state.update(read_bin(f))
            continue
        try:
            state.update(load_file(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise IGPTError(f"{f} is not a readable safetensors file ({e})") from None
    return state


def config_from_hf(hf: dict, has_bias: bool, n_classes: int) -> IGPTConfig:
    d = hf.get("n_embd", 512)
    n_inner = hf.get("n_inner")
    act = hf.get("activation_function", "quick_gelu")
    if n_inner not in (None, 4 * d) or act != "quick_gelu":
        raise IGPTError(
            f"unsupported ImageGPT variant (n_inner={n_inner}, activation={act!r}); "
            "iGPT uses n_inner=4·n_embd and quick_gelu"
        )
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise IGPTError("unsupported ImageGPT attention scaling (iGPT scales by 1/sqrt(head_dim))")
    n_pos = hf.get("n_positions", 1024)
    n_px = math.isqrt(n_pos)
    if n_px * n_px != n_pos:
        raise IGPTError(f"n_positions={n_pos} is not a square image")
    return IGPTConfig(
        vocab_size=hf.get("vocab_size", 513) - 1,
        n_px=n_px,
        n_embd=d,
        n_head=hf.get("n_head", 8),
        n_layer=hf.get("n_layer", 24),
        objective="ar",  # HF ImageGPT is always causal
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        bias=has_bias,
        n_classes=n_classes,
    )


def from_hf(source) -> IGPT:
    """Build an :class:`IGPT` from an HF ImageGPT folder or an in-memory HF ImageGPT model.

    Accepts ``ImageGPTModel``, ``ImageGPTForCausalImageModeling`` and
    ``ImageGPTForImageClassification`` weights. Biases are kept only if some are non-zero, so
    converted OpenAI checkpoints load into the bias-free iGPT exactly. A folder's palette
    (``preprocessor_config.json`` clusters) is attached as ``model.palette``.
    """
    centres = None
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_dir():
            raise IGPTError(f"no Hugging Face checkpoint folder at {path}")
        hf_cfg, state, centres = _read_hf_folder(path)
        where = str(path)
    elif hasattr(source, "state_dict") and hasattr(source, "config"):
        hf_cfg = source.config.to_dict()
        if hf_cfg.get("model_type") != "imagegpt":
            raise IGPTError(f"not an ImageGPT model (model_type {hf_cfg.get('model_type')!r})")
        state = {k: v.detach().cpu() for k, v in source.state_dict().items()}
        where = type(source).__name__
    else:
        raise IGPTError(f"from_hf takes a folder or an HF ImageGPT model, not {type(source)}")

    # ImageGPTModel has no prefix; the head models put the body under "transformer.".
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    # Causal-mask buffers (``h.i.attn.bias``/``masked_bias``) saved by older transformers
    # versions are not weights; the real biases are ``c_attn.bias`` and ``c_proj.bias``.
    state = {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    has_bias = any(
        k.endswith(".bias") and bool(v.abs().max() > 0) for k, v in state.items() if v.numel()
    )
    n_classes = state["score.weight"].shape[0] if "score.weight" in state else 0
    cfg = config_from_hf(hf_cfg, has_bias, n_classes)
    k = cfg.vocab_size

    ours: dict[str, torch.Tensor] = {}
    try:
        wte = state.pop("wte.weight")
        ours["wte.weight"], ours["sos"] = wte[:k], wte[k]
        ours["wpe"] = state.pop("wpe.weight")
        ours["ln_f.g"] = state.pop("ln_f.weight")
        # ImageGPTModel has no head: its (zero-initialised) head stays zero, as in iGPT.
        ours["wtet.weight"] = state.pop("lm_head.weight", torch.zeros(k, cfg.n_embd))
        if n_classes:
            ours["wclf.weight"] = state.pop("score.weight")
        for i in range(cfg.n_layer):
            for mine, theirs, transpose in _BLOCK_MAP:
                t = state.pop(f"h.{i}.{theirs}", None)
                if mine.endswith(".bias") and not has_bias:
                    continue
                if t is None:
                    raise KeyError(f"h.{i}.{theirs}")
                ours[f"blocks.{i}.{mine}"] = t.t() if transpose else t
    except KeyError as e:
        raise IGPTError(f"{where} is missing weight {e.args[0]!r}") from None
    with torch.device("meta"):
        model = IGPT(cfg)
    check_state_dict(model.state_dict(), ours, where)
    model.load_state_dict({n: t.contiguous().float() for n, t in ours.items()}, assign=True)
    model.eval()
    if centres is not None:
        model.palette = Palette(centres)
    return model


# ---------------------------------------------------------------------------- export
def hf_config(cfg: IGPTConfig) -> dict:
    """The HF ``config.json`` of an ImageGPT model with our shape (dropout off: iGPT has none)."""
    return {
        "model_type": "imagegpt",
        "architectures": [
            "ImageGPTForImageClassification" if cfg.n_classes else "ImageGPTForCausalImageModeling"
        ],
        "vocab_size": cfg.vocab_size + 1,
        "n_positions": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "quick_gelu",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": False,
        "use_cache": True,
        **({"num_labels": cfg.n_classes} if cfg.n_classes else {}),
    }


def hf_state_dict(model: IGPT) -> dict[str, torch.Tensor]:
    """Our weights under HF ImageGPT names (zero biases written out when we have none)."""
    cfg = model.config
    if cfg.objective != "ar":
        raise IGPTError(
            "cannot export a BERT model to Hugging Face ImageGPT: its attention is always causal"
        )
    if cfg.n_classes and (cfg.clf_bias or cfg.clf_layer not in (-1, cfg.n_layer)):
        raise IGPTError(
            "cannot export this classifier to Hugging Face ImageGPT: its head is bias-free on "
            "the pooled ln_f, and this one has a bias or reads an inner layer"
        )
    sd = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    out = {
        "transformer.wte.weight": torch.cat([sd["wte.weight"], sd["sos"][None]]),
        "transformer.wpe.weight": sd["wpe"],
        "transformer.ln_f.weight": sd["ln_f.g"],
        "lm_head.weight": sd["wtet.weight"],
    }
    if cfg.n_classes:
        out["score.weight"] = sd["wclf.weight"]
    for i in range(cfg.n_layer):
        for mine, theirs, transpose in _BLOCK_MAP:
            t = sd.get(f"blocks.{i}.{mine}")
            if t is None:  # a bias we do not have: HF wants it, and zero is exact
                out_dim = sd[f"blocks.{i}.{mine.replace('.bias', '.weight')}"].shape[0]
                t = torch.zeros(out_dim)
            out[f"transformer.h.{i}.{theirs}"] = (t.t() if transpose else t).contiguous()
    return out


def to_hf(model: IGPT, path: str | Path, palette=None) -> Path:
    """Write an HF ImageGPT checkpoint folder (``config.json``, ``model.safetensors``, and
    ``preprocessor_config.json`` with the palette when an RGB palette is given)."""
    path = Path(path)
    tensors = hf_state_dict(model)  # validates before anything is written
    palette = palette if palette is not None else getattr(model, "palette", None)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_write(path / "model.safetensors") as f:
        f.write(st_save(tensors, metadata={"format": "pt"}))
    write_json(path / "config.json", hf_config(model.config))
    if palette is not None and palette.channels == 3:
        # HF's image processor quantises RGB only; a grey palette has no HF equivalent.
        n = model.config.n_px
        write_json(
            path / "preprocessor_config.json",
            {
                "image_processor_type": "ImageGPTImageProcessor",
                "clusters": palette.centers.tolist(),
                "do_color_quantize": True,
                "do_normalize": True,
                "do_resize": True,
                "resample": 2,
                "size": {"height": n, "width": n},
            },
        )
    return path
