"""The model stage: the iGPT network and everything that reads or writes one.

- :mod:`~igpt_eval.model.config`: :class:`IGPTConfig` and the presets;
- :mod:`~igpt_eval.model.ops`, :mod:`~igpt_eval.model.blocks`: attention and the norm (the
  literal path and the fast CPU training path), and the transformer block;
- :mod:`~igpt_eval.model.igpt`: :class:`IGPT` (objectives, features, generation);
- :mod:`~igpt_eval.model.sites`: activation-site names, used everywhere;
- :mod:`~igpt_eval.model.checkpoint`: checkpoint folders, resume state, snapshots;
- :mod:`~igpt_eval.model.hf`: Hugging Face ImageGPT import and export.

Saving, loading and conversion are functions that take a model, not methods of it, so the
model class imports none of them and imports point one way (checkpoint, hf → igpt)::

    from igpt_eval.model import IGPT, load_model, save_model
    model = load_model("models/fmnist-ar")
    save_model(model, "runs/copy", palette=load_palette("models/fmnist-ar"))
"""

from igpt_eval.model.checkpoint import load_model, load_palette, save_model
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.hf import from_hf, to_hf
from igpt_eval.model.igpt import IGPT
from igpt_eval.model.sites import SITE_KINDS, site_name

__all__ = [
    "IGPT",
    "SITE_KINDS",
    "IGPTConfig",
    "from_hf",
    "load_model",
    "load_palette",
    "save_model",
    "site_name",
    "to_hf",
]
