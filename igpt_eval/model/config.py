"""``IGPTConfig``: the shape and objective of an iGPT model, with the paper's size presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

from igpt_eval.errors import IGPTError
from igpt_eval.io import read_json, write_json

OBJECTIVES = ("ar", "bert")


@dataclass
class IGPTConfig:
    """Hyper-parameters of an :class:`~igpt_eval.model.igpt.IGPT`.

    Defaults are iGPT-S on 32×32 images with the paper's 512-colour palette.
    """

    vocab_size: int = 512  # palette size k: the model predicts palette ids only (no SOS class)
    n_px: int = 32  # image side; the sequence is the n_px² pixels in raster order
    n_embd: int = 512  # width d
    n_head: int = 8  # attention heads; head_dim = d / n_head
    n_layer: int = 24  # transformer blocks
    objective: str = "ar"  # "ar" (causal, next pixel) or "bert" (bidirectional, masked pixels)
    mask_prob: float = 0.15  # BERT: each position masked independently with this probability
    norm_eps: float = 1e-5  # the OpenAI norm's epsilon (HF's layer_norm_epsilon)
    bias: bool = False  # linear biases: off in iGPT; on only to load HF checkpoints exactly
    n_classes: int = 0  # rows of the classifier wclf; 0 = no classifier (pretraining)
    # The classifier's input: -1 = the mean-pooled ln_f (the paper's), l = layer l's probe
    # feature (block l's ln_1, mean-pooled); a head fine-tuned at an inner layer says so here.
    clf_layer: int = -1
    # A bias on wclf: off in iGPT; fine-tuning folds its feature standardisation into it.
    clf_bias: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_positions(self) -> int:
        """Sequence length: one position per pixel."""
        return self.n_px * self.n_px

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def check_palette(self, palette, hint: str = "") -> None:
        """One clear error when ``palette`` does not hold this model's ``vocab_size`` colours
        (the model predicts palette ids, so any other count mislabels every token); ``hint``
        says what to do about it."""
        if palette.k != self.vocab_size:
            raise IGPTError(
                f"the palette has {palette.k} colours but the model's vocabulary is "
                f"{self.vocab_size}{hint}"
            )

    def validate(self) -> None:
        """Check types and ranges; raise one clear :class:`IGPTError` on the first problem."""
        for f in fields(self):
            v = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "str": str, "bool": bool}[f.type]
            # bool is an int subclass in Python; a JSON true must not pass as a width.
            if not isinstance(v, want) or (f.type != "bool" and isinstance(v, bool)):
                raise IGPTError(f"config field {f.name!r} must be {f.type}, got {v!r}")
        for name in ("vocab_size", "n_px", "n_embd", "n_head", "n_layer"):
            if getattr(self, name) < 1:
                raise IGPTError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size > 65535:
            raise IGPTError("vocab_size must fit uint16 token files (<= 65535)")
        if self.n_embd % self.n_head:
            raise IGPTError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.objective not in OBJECTIVES:
            raise IGPTError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0.0 < self.mask_prob < 1.0:
            raise IGPTError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.n_classes < 0:
            raise IGPTError(f"n_classes must be >= 0, got {self.n_classes}")
        if not -1 <= self.clf_layer <= self.n_layer:
            raise IGPTError(
                f"clf_layer must be -1 (ln_f) or a layer 0..{self.n_layer}, got {self.clf_layer}"
            )

    @property
    def head_layer(self) -> int:
        """The layer the classifier reads (``n_layer`` = the final ``ln_f``)."""
        return self.n_layer if self.clf_layer < 0 else self.clf_layer

    # ---------------------------------------------------------------- presets and files
    @classmethod
    def preset(cls, name: str, **overrides) -> IGPTConfig:
        """A named size preset (``S``, ``M``, ``L``, ``XL`` or a small CPU preset) with overrides.

        >>> IGPTConfig.preset("tiny", objective="bert").objective
        'bert'
        """
        if name not in PRESETS:
            raise IGPTError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IGPTConfig:
        """Build from a dict; unknown keys and wrong types are errors, not silently dropped."""
        if not isinstance(d, dict):
            raise IGPTError(f"a model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise IGPTError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> IGPTConfig:
        """Read a ``config.json``; a missing or malformed file is one clear error."""
        path = Path(path)
        try:
            d = read_json(path)
        except FileNotFoundError:
            raise IGPTError(f"no model config at {path}") from None
        return cls.from_dict(d)

    @classmethod
    def resolve(cls, spec: str, **overrides) -> IGPTConfig:
        """A preset name or a path to a config JSON file (the CLI's ``--model`` value)."""
        if spec in PRESETS:
            return cls.preset(spec, **overrides)
        if spec.endswith(".json") or Path(spec).is_file():
            return cls.from_dict({**cls.load(spec).to_dict(), **overrides})
        raise IGPTError(f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a config file")

    def n_params(self) -> int:
        """Parameter count implied by the config (matches ``IGPT(config).n_params()``)."""
        d, k, L = self.n_embd, self.vocab_size, self.n_layer
        block = 12 * d * d + 2 * d + (9 * d if self.bias else 0)
        clf = self.n_classes * (d + (1 if self.clf_bias else 0))
        return L * block + 2 * k * d + self.n_positions * d + 2 * d + clf

    def flops_per_token(self, *, head: bool = True, training: bool = False) -> float:
        """Matmul FLOPs per token, 2 per multiply-add: each block's projections and MLP
        (24 d²), its attention scores and weighted values (4 T d, half of it for causal
        attention, which computes only the lower triangle), and the output head unless
        ``head=False`` (feature extraction never computes it). ``training`` counts the
        forward and backward passes (3 × forward). Compute budgets and MFU use it."""
        d, L, T, k = self.n_embd, self.n_layer, self.n_positions, self.vocab_size
        attn = 4 * T * d * (0.5 if self.objective == "ar" else 1.0)
        forward = L * (24 * d * d + attn) + (2 * d * k if head else 0)
        return 3 * forward if training else forward


# Paper sizes (d / heads / layers) and small presets for CPU work and tests.
PRESETS: dict[str, dict] = {
    "S": dict(n_embd=512, n_head=8, n_layer=24),
    "M": dict(n_embd=1024, n_head=8, n_layer=36),
    "L": dict(n_embd=1536, n_head=16, n_layer=48),
    # The paper gives no head count for XL; 24 heads keep head_dim at 128.
    "XL": dict(n_embd=3072, n_head=24, n_layer=60),
    # CPU-sized (the shipped Fashion-MNIST models): 16 colours at 16×16, 8 blocks so that a
    # depth curve has resolution; ~1.6M parameters train at ~35 images/s on one CPU core.
    "mini": dict(vocab_size=16, n_px=16, n_embd=128, n_head=4, n_layer=8),
    # For tests: everything tiny, still 3 blocks so "middle layers" exist.
    "tiny": dict(vocab_size=16, n_px=8, n_embd=32, n_head=4, n_layer=3),
}
