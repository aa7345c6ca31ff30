"""Settings of the studies (:class:`ProbeSettings`, :class:`LowDataConfig`,
:class:`TrackSettings`), with their defaults and the measurements behind them.

:class:`ProbeSettings` holds the protocol, extraction and sample settings of one probe run in
one object that ``igpt-eval probe``, ``compare`` and ``track`` build and hand on (a track's
:class:`TrackSettings` holds one); where files are read and written (data, caches, results)
stays with the call.

A light module (no torch, no numpy), so the command line can show the defaults in ``--help``
without importing the studies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from igpt_eval.cache.settings import ExtractSettings
from igpt_eval.defaults import (
    BERT_MASKS,
    DEFAULT_SITE,
    PROBE_FEATURE_BYTES,
    SAMPLE_TEST,
    SAMPLE_TRAIN,
    SAMPLE_VAL,
)
from igpt_eval.errors import IGPTError
from igpt_eval.settings import Settings

METHODS = ("lbfgs", "sgd")


@dataclass(frozen=True)
class ProbeSettings(Settings):
    """How a model is probed: which features, which probe, on which sample of each split.

    ``ProbeSettings(method="sgd")``, or ``settings.replace(test_size=None)`` for a copy
    with some fields changed; :func:`~igpt_eval.studies.probe.probe_model` takes the same
    fields as keyword arguments too.
    """

    # --- the features
    layers: tuple[int, ...] | None = None  # None: every layer of the model (0..n_layer)
    site: str = DEFAULT_SITE  # the paper's: block input after its first norm (docs/design.md)
    bert_masks: int = BERT_MASKS  # independent masks averaged per image (BERT models only)
    batch_size: int | None = None  # images per forward; None: the device's (model.devices)
    compute: str = "auto"  # bf16 autocast on a GPU; float32 (exact, same everywhere) on CPU
    cache_dtype: str = "float32"  # stored features; float16 halves the disk at iGPT-M/L size
    # --- the probe
    method: str = "lbfgs"  # lbfgs: full batch, C chosen on val; sgd: streamed from the cache
    backend: str = "torch"  # L-BFGS solver: torch (batched, GPU-able), sklearn or cuml
    device: str = "auto"  # where extraction and probes run: auto (CUDA when present), cpu, cuda
    standardize: bool = True  # train statistics: standardise (L-BFGS) or whiten (SGD)
    seed: int = 0  # BERT masks, probes, bootstrap intervals (the split is the run's)
    max_feature_bytes: int = PROBE_FEATURE_BYTES  # L-BFGS holds this much at once (groups)
    # --- the sample: a stratified one per split (None: all of it), the main job's budget
    train_size: int | None = SAMPLE_TRAIN
    val_size: int | None = SAMPLE_VAL
    test_size: int | None = SAMPLE_TEST
    # --- controls and extra probes (docs/design.md, "Probes")
    pixels: bool = True  # the raw-pixel baseline (palette-quantised), same splits and sample
    native_pixels: bool = True  # and the dataset's own pixels at native resolution: the
    # stronger control (Fashion-MNIST: 784 grey values, not 256 palette indices), for seconds
    random_weights: bool = False  # probe the model's random-weights twin instead of the model
    concat_layers: int | None = None  # K (odd): the K layers around the best, concatenated
    KIND: ClassVar[str] = "probe"

    def __post_init__(self):
        if self.method not in METHODS:
            raise IGPTError(f"unknown probe method {self.method!r}; use lbfgs or sgd")
        if self.layers is not None:  # a list from a caller, kept hashable and unshared
            object.__setattr__(self, "layers", tuple(self.layers))

    def extraction(self, objective: str) -> ExtractSettings:
        """What a probe run extracts from a model of ``objective`` (AR models are read
        unmasked, so their caches record no masks)."""
        return ExtractSettings(
            layers=self.layers,
            site=self.site,
            dtype=self.cache_dtype,
            bert_masks=self.bert_masks if objective == "bert" else 0,
            seed=self.seed,
            compute=self.compute,
            batch_size=self.batch_size,
        )

    @property
    def sizes(self) -> dict[str, int | None]:
        """The sample size of each split (``None``: the whole split)."""
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}


@dataclass
class LowDataConfig:
    """The study's settings. On 2 CPU cores a seed of both shipped models takes ~18 min
    (measured: the default 5 seeds in 87 min)."""

    ks: tuple[int, ...] = (4, 25, 400)  # the paper's 40 / 250 / 4,000 labels for 10 classes
    seeds: int = 5  # draws per K: mean ± std over them
    # Fine-tuning budget, scaled with the labels (a fixed 100 steps was 0.27 epoch at K = 400,
    # where fine-tuning then scored below K = 25): epochs passes over the K-subset's training
    # part, at least min_steps (K = 4 is ~4 steps an epoch) and at most max_steps (K = 400:
    # 3 epochs = 1,125 steps at batch 8); early stopping may end any run sooner.
    epochs: float = 3.0
    min_steps: int = 100
    max_steps: int = 1200
    test_images: int = 1000  # fixed stratified test subset (~10 s to score per fine-tune)
    lr: float = 1e-3  # fine-tuning: constant Adam rate (3e-3 measured worse at K=25)
    batch_size: int = 8  # small batches: 4x the updates of batch 32 for the same images/s
    eval_every: int = 20  # fine-tuning: steps between held-out scores
    patience: int = 3  # fine-tuning: evaluations without improvement before stopping
    objective: str = "joint"  # fine-tuning objective: L_gen + L_clf (the paper's)
    layer: int | None = None  # fine-tuning head layer (None: ln_f)
    augment: bool = False  # the paper's augmentation during fine-tuning
    bf16: bool = False  # autocast: 2x faster on CPUs with bf16 units, 2.5x slower on AVX2 ones
    finetune: bool = True  # False: probes only
    select_iter: int = 50  # L-BFGS iterations per C when choosing the probe layer
    probe_iter: int = 300  # L-BFGS iteration cap of the final probe (convergence recorded)
    device: str = "cpu"
    keep_checkpoints: bool = False  # fine-tuned weights are ~7 MB a run; results are kept

    def validate(self) -> None:
        """One clear error for settings that cannot run."""
        if not self.ks or min(self.ks) < 2:
            raise IGPTError(f"every K must be >= 2 (one to train on, one held out): {self.ks}")
        if self.seeds < 1 or self.min_steps < 1 or self.test_images < 0:
            raise IGPTError("seeds and steps must be >= 1, test images >= 0")
        if not self.epochs > 0 or self.max_steps < self.min_steps:
            raise IGPTError("epochs must be > 0 and max steps >= min steps")

    def steps(self, n_train: int) -> int:
        """Fine-tuning steps for a training part of ``n_train`` images."""
        per_epoch = n_train / min(self.batch_size, n_train)
        return int(min(self.max_steps, max(self.min_steps, round(self.epochs * per_epoch))))


@dataclass(frozen=True)
class TrackSettings(Settings):
    """How each snapshot of a training run is probed: one :class:`ProbeSettings` for every
    snapshot, and which snapshots. The probe defaults (the main job's sample) keep one
    snapshot of the 16 px ``mini`` model to about a minute of extraction on 2 CPU cores, at
    a test-accuracy standard error of about 0.5 points, enough to see trends across
    training; a run's last snapshot and the model shipped from it are then probed on the
    same images."""

    probe: ProbeSettings = dataclasses.field(default_factory=ProbeSettings)
    steps: tuple[int, ...] | None = None  # only these snapshot steps (None: all)
    KIND: ClassVar[str] = "track"

    def __post_init__(self):
        p = self.probe
        if p.random_weights or p.concat_layers is not None or p.layers is not None:
            raise IGPTError(
                "a track probes every layer of each snapshot as trained: give no layers, "
                "random_weights or concat_layers"
            )
        if self.steps is not None:
            object.__setattr__(self, "steps", tuple(self.steps))


@dataclass(frozen=True)
class CampaignSettings:
    """One pretraining campaign (:mod:`igpt_eval.studies.campaign`), sized for one call of
    at most ~9 minutes on one H200 (docs/campaign.md gives the reasoning behind each shape
    choice and the expected tokens and FLOPs)."""

    budget_min: float = 5.0  # pretraining wall clock, the throughput pilot included
    finetune_min: float = 1.0  # fine-tuning wall clock after the probes (0: none)
    name: str = "fmnist-ar-gpu"  # the model folder's name, the label in every result
    dataset: str = "fashion-mnist"
    split_seed: int = 0
    seed: int = 0  # initialisation, batch order, palette fit, probes
    device: str = "auto"
    # --- the model: deeper than the CPU models (the paper's deeper-is-better), at the native
    # 28 × 28 (T = 784, the paper's regime of long sequences), with a finer palette; the
    # bf16 weights of 7.2M parameters fit one 16 MiB file (what a GPU call can bring back)
    n_px: int = 28
    vocab_size: int = 32
    n_embd: int = 192
    n_head: int = 6  # head size 32, as the CPU models
    n_layer: int = 16
    # --- the recipe: the paper's Adam, warm-up and cosine; its batch of 128
    batch_size: int = 128
    lr: float = 2e-3
    grad_clip: float | None = 1.0  # one diverged run would spend the only GPU call
    pilot_steps: int = 20  # timed steps (after 5 untimed) that fix the step count
    snapshots: int = 6  # log-spaced snapshots + the last, and step 0 (random weights)
    evals: int = 20  # validation losses over the run (plus one per snapshot)
    eval_images: int = 2000
    # --- the probes: every snapshot on the main job's sample, the final model on full splits
    track_sizes: tuple[int | None, int | None, int | None] = (SAMPLE_TRAIN, SAMPLE_VAL, SAMPLE_TEST)
    final_sizes: tuple[int | None, int | None, int | None] = (None, None, None)
    concat_layers: int | None = 5
    # --- fine-tuning: the shipped fine-tune's recipe (head on the layer chosen on validation)
    finetune_lr: float = 1e-4
    finetune_batch: int = 64
    finetune_eval_every: int = 200

    def validate(self) -> None:
        """One clear error for settings that cannot run."""
        for name in ("budget_min", "finetune_min"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v == v and 0 <= v < float("inf")):
                raise IGPTError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.budget_min > 0:
            raise IGPTError(f"the pretraining budget must be positive, got {self.budget_min}")
        if self.pilot_steps < 1 or self.snapshots < 1 or self.evals < 1:
            raise IGPTError("pilot steps, snapshots and evaluations must be >= 1")
        if self.n_embd % self.n_head:
            raise IGPTError(f"width {self.n_embd} is not divisible by {self.n_head} heads")

    def replace(self, **changes) -> CampaignSettings:
        """A copy with ``changes`` (field names; lists become tuples, as JSON gives them);
        an unknown name is one clear error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise IGPTError(f"no campaign setting named {unknown[0]!r}; see docs/campaign.md")
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        return dataclasses.replace(self, **changes)


#: ``igpt-eval campaign --smoke``: the same code path at a size that runs in seconds on a CPU.
SMOKE_CAMPAIGN = CampaignSettings(
    budget_min=0.2,
    finetune_min=0.05,
    device="cpu",
    n_px=8,
    vocab_size=8,
    n_embd=32,
    n_head=4,
    n_layer=3,
    batch_size=16,
    pilot_steps=3,
    snapshots=2,
    evals=3,
    eval_images=100,
    track_sizes=(200, 100, 200),
    final_sizes=(400, 100, 300),
    concat_layers=3,
    finetune_batch=16,
    finetune_eval_every=5,
)
