"""The classifier head's input, and the standardisation a fine-tuned head carries.

``IGPT.classify`` and fine-tuning read the same feature: layer ``l``'s probe feature (block
``l``'s ``ln_1`` output), or for the last layer the final ``ln_f`` output, averaged over
positions (docs/design.md, "Model"; ``IGPTConfig.clf_layer`` says which). It is read with a site tap
(:meth:`~igpt_eval.model.igpt.IGPT.residual`; ``model`` below is an ``IGPT``, which
imports this module, so it is typed loosely), which the fast CPU training path serves as
the literal one does (no forward hooks, which one path would skip), and the forward stops
once the feature has been read.

Fine-tuning trains the head on standardised features ``z = (x − μ)/σ`` (training
statistics: a zero head on raw pooled features sees dimensions whose scales differ by an
order of magnitude), then folds the standardisation into the head's weight and bias
(:func:`fold_standardisation`), so a fine-tuned classifier is one ordinary checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from igpt_eval.model.blocks import StopForward

#: Standard deviations are floored at this fraction of the layer's largest one, so a
#: near-constant dimension (bf16 rounding noise, a dead unit) is not blown up to unit
#: variance. Measured on the shipped AR model's float32 features (5,000 training images)
#: the smallest σ is 0.088 of the largest (layer 0) to 0.23 (layer 5): the floor never binds
#: there; it guards features computed in lower precision.
REL_SD_FLOOR = 1e-3


class HeadInput:
    """A site tap that keeps layer ``layer``'s probe feature on the way through the blocks:
    block ``layer``'s ``ln_1`` output, or for the last layer the final residual stream,
    which :meth:`pooled` puts through ``ln_f`` (BERT's loss applies ``ln_f`` to the masked
    positions only, so the tap cannot reuse it). With ``stop`` the forward ends there."""

    def __init__(self, model: nn.Module, layer: int, stop: bool):
        self.model, self.layer, self.stop = model, layer, stop
        self.kind = "ln_1" if layer < model.config.n_layer else "resid_pre"
        self.x: torch.Tensor | None = None

    def __call__(self, layer: int, kind: str, x: torch.Tensor) -> None:
        if layer == self.layer and kind == self.kind:
            self.x = x
            if self.stop:
                raise StopForward

    def pooled(self) -> torch.Tensor:
        """The kept feature averaged over positions ``[B, d]``."""
        x = self.x if self.kind == "ln_1" else self.model.ln_f(self.x)  # (B, T, d)
        return x.mean(1)  # (B, d)


def pooled_feature(model: nn.Module, tokens, layer: int, mask=None) -> torch.Tensor:
    """Layer ``layer``'s probe feature averaged over positions ``[B, d]``, on the training
    path as on the literal one; nothing past that layer is computed."""
    keep = HeadInput(model, layer, stop=True)
    try:
        model.residual(tokens, mask, tap=keep)
    except StopForward:
        pass
    return keep.pooled()


def feature_scale(x: np.ndarray, rel_floor: float = REL_SD_FLOOR):
    """``(μ, σ)`` over the rows of ``x`` (``[..., N, d]`` → ``[..., 1, d]`` each), in
    float64, with σ floored at ``rel_floor`` times the largest σ of the same layer (see
    :data:`REL_SD_FLOOR`); an all-constant layer gets σ = 1."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(-2, keepdims=True), floored(x.std(-2, keepdims=True), rel_floor)


def floored(sd: np.ndarray, rel_floor: float = REL_SD_FLOOR) -> np.ndarray:
    """Standard deviations ``[..., d]`` floored at ``rel_floor`` times the largest of their
    layer (the last axis); an all-zero layer gets 1."""
    top = sd.max(-1, keepdims=True)
    return np.maximum(sd, np.where(top > 0, rel_floor * top, 1.0))


def fold_standardisation(weight, bias, mu, sd) -> tuple[torch.Tensor, torch.Tensor]:
    """A head ``W z + b`` on ``z = (x − μ)/σ`` as one on ``x``: ``(W/σ, b − (W/σ) μ)``.
    ``weight [K, d]``, ``bias [K]`` (or ``None``), ``mu`` and ``sd`` ``[d]``."""
    w = weight / sd  # (K, d)
    b = (torch.zeros(len(weight), dtype=w.dtype) if bias is None else bias) - w @ mu
    return w, b
