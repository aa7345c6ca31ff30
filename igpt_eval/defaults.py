"""Defaults shared by the library and the command line, each with the measurement behind it.

A light module (no torch, no numpy), so the CLI can show them in ``--help`` without paying
for the heavy imports.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_path

#: The shipped models live beside the package (a source checkout or editable install);
#: ``$IGPT_EVAL_MODELS`` points elsewhere.
MODELS_DIR = Path(
    os.environ.get("IGPT_EVAL_MODELS", Path(__file__).resolve().parents[1] / "models")
)
#: What ``igpt-eval probe`` probes when given no model.
DEFAULT_MODEL = MODELS_DIR / "fmnist-ar"
#: What ``igpt-eval compare`` compares when given no models: the shipped AR and BERT models.
DEFAULT_MODELS = (MODELS_DIR / "fmnist-ar", MODELS_DIR / "fmnist-bert")

#: Images per forward pass when extracting features. Small batches keep a block's
#: activations in cache: on this project's 2-core AVX2 machine (32 MB L3) 16 images ran
#: 1.4-1.5x faster than 64 (one thread, the 16 px ``mini`` model), whose (64 x 256, 512) MLP
#: activations spill to memory.
EXTRACT_BATCH = 16
#: Images per extraction forward on a GPU: enough rows to fill its matrix units at iGPT-S
#: size, while a block's (B, 1024, 4d) bf16 MLP activations stay under a GB.
GPU_EXTRACT_BATCH = 128

#: The stratified sample the main job (``probe``), ``compare`` and ``track`` probe by default,
#: per split (``None`` would be the whole split). Extraction is the cost: the 16 px, 8-layer
#: ``mini`` model reads about 50 images/s in float32 on this project's 2-core machine, so
#: 12,000 images keep ``igpt-eval probe --all-layers`` within 5 minutes from cold caches.
#: 5,000 test images give a paired difference of two probes a 95% CI of about ±1 point;
#: ``--train-size all --val-size all --test-size all`` measures on every image.
SAMPLE_TRAIN = 5_000
SAMPLE_VAL = 2_000
SAMPLE_TEST = 5_000

#: The feature site the paper probes: a block's input after its first norm (``ln_1``; at
#: the last layer, the final norm ``ln_f``), the default of every extraction.
DEFAULT_SITE = "ln_1"

#: Masks averaged per image when a BERT model's features are extracted (0: the unmasked
#: image). Measured on the shipped BERT model (``reports/bert-masks/``): unmasked features
#: had the best validation accuracy at 8 of 9 layers, 1.0-3.6 points above one mask
#: (25 at the embeddings, whose mean then carries the mask count), and five masks, at five
#: forwards per image, passed them at one layer by one validation image.
BERT_MASKS = 0


#: Float32 features (train + val + test) the L-BFGS protocol holds in memory at once; more
#: layers than fit are probed a group at a time, with the same results. The protocol's
#: standardised copy and train+val refit matrix take about as much again and half as much
#: more, so 4 GiB of features peak near 10 GiB: iGPT-S on CIFAR-10 (25 x 512 floats x 60,000
#: images, 3.1 GB) in one group, iGPT-L (49 x 1536, 18 GB) in five.
PROBE_FEATURE_BYTES = 4 << 30


def cache_root() -> Path:
    """The folder of the managed caches (token caches in ``tokens/``, activation caches in
    ``activations/``): ``$IGPT_EVAL_CACHE`` if set, else the platform's user cache folder
    (``~/.cache/igpt-eval`` on Linux). Read at each call, never relative to the working
    directory, so a command run from anywhere reuses the same caches."""
    env = os.environ.get("IGPT_EVAL_CACHE")
    return Path(env).expanduser() if env else user_cache_path("igpt-eval", appauthor=False)
