"""Activation sites: the one place where the names of probe-able activations are defined.

A *layer* ``l`` runs from 0 to ``n_layer`` (one more than the number of blocks), following
the paper: layer ``l < n_layer`` is read at the input of block ``l``, layer ``n_layer`` after
the last block. A *site kind* says which activation at that point:

=============  ==========================================  ==============================
kind           layer l < n_layer                            layer n_layer
=============  ==========================================  ==============================
``ln_1``       ``blocks.{l}.ln_1``: block l's first norm    ``ln_f``: the final norm
               output, with its gain (the paper's feature)
``resid_pre``  ``blocks.{l}.resid_pre``: raw residual       ``blocks.{L-1}.resid_post``
               stream entering block l
``attn_out``   ``blocks.{l}.attn_out``: block l's           (none)
               attention output, before the residual add
``mlp_out``    ``blocks.{l}.mlp_out``: block l's MLP output  (none)
=============  ==========================================  ==============================

These names (TransformerLens style) are used everywhere: cache file names, the ``site`` column
of results tables, and the CLI's ``--site`` flag (which takes the kind).
"""

from __future__ import annotations

import re

from igpt_eval.errors import IGPTError

#: Site kinds, the paper's default first.
SITE_KINDS: tuple[str, ...] = ("ln_1", "resid_pre", "attn_out", "mlp_out")

# Kinds that only exist inside a block, so have no value at layer n_layer.
_BLOCK_ONLY = {"attn_out", "mlp_out"}


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a known site kind, else raise a one-line :class:`IGPTError`."""
    if kind not in SITE_KINDS:
        raise IGPTError(f"unknown site {kind!r}; choose one of {', '.join(SITE_KINDS)}")
    return kind


def valid_layers(kind: str, n_layer: int) -> range:
    """The layers at which site ``kind`` exists in a model with ``n_layer`` blocks."""
    check_kind(kind)
    return range(n_layer) if kind in _BLOCK_ONLY else range(n_layer + 1)


def site_name(layer: int, kind: str, n_layer: int) -> str:
    """The TransformerLens-style name of the activation ``kind`` at ``layer``.

    >>> site_name(3, "ln_1", 8), site_name(8, "ln_1", 8), site_name(8, "resid_pre", 8)
    ('blocks.3.ln_1', 'ln_f', 'blocks.7.resid_post')
    """
    check_layers([layer], kind, n_layer)
    if layer == n_layer:
        return "ln_f" if kind == "ln_1" else f"blocks.{n_layer - 1}.resid_post"
    return f"blocks.{layer}.{kind}"


_NAME = re.compile(r"^blocks\.(\d+)\.(ln_1|resid_pre|attn_out|mlp_out|resid_post)$")


def parse_site(name: str, n_layer: int) -> tuple[int, str]:
    """Inverse of :func:`site_name`: ``'blocks.3.ln_1'`` -> ``(3, 'ln_1')``."""
    if name == "ln_f":
        return n_layer, "ln_1"
    m = _NAME.match(name)
    if m is None:
        raise IGPTError(f"not an activation site name: {name!r} (e.g. 'blocks.3.ln_1', 'ln_f')")
    layer, kind = int(m.group(1)), m.group(2)
    if kind == "resid_post":
        if layer != n_layer - 1:
            raise IGPTError(f"only the last block's resid_post is a site, not {name!r}")
        return n_layer, "resid_pre"
    check_layers([layer], kind, n_layer)
    return layer, kind


def check_layers(layers, kind: str, n_layer: int) -> list[int]:
    """Validate and sort layer indices for site ``kind``; one clear error when out of range."""
    ok = valid_layers(kind, n_layer)
    layers = sorted({int(x) for x in layers})
    if not layers:
        raise IGPTError("no layers requested")
    bad = [x for x in layers if x not in ok]
    if bad:
        raise IGPTError(
            f"layer {bad[0]} is out of range for site {kind!r}: "
            f"this model has layers {ok.start}..{ok.stop - 1}"
        )
    return layers
