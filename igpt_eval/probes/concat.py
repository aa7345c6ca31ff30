"""The multi-layer probe: the layers around the best one, concatenated (the paper's best
iGPT-XL result concatenates 5 layers centred on its best single layer).

After the single-layer probes, the layer chosen on *validation* is the centre; the K probed
layers around it (K odd) are concatenated, K·d features a row, and probed with the same
L-BFGS protocol (C chosen on validation, refit on train + val, test once). Near either end
of the network the window is clipped, i.e. shifted inwards, so that it always holds K layers.
Its rows carry ``probe = "lbfgs_concat"``, ``layer`` = the centre, ``site`` naming the span
(``concat(blocks.2.ln_1..blocks.6.ln_1)``) and ``concat_layers`` = K.
"""

from __future__ import annotations

import numpy as np

from igpt_eval.errors import IGPTError
from igpt_eval.names import CONCAT
from igpt_eval.predictions import Scored
from igpt_eval.probes.protocol import Features, Protocol, probe_lbfgs
from igpt_eval.results import row


def check_concat(k, n_layers: int, method: str = "lbfgs") -> None:
    """Refuse a multi-layer probe of ``k`` layers out of ``n_layers`` probed ones (one
    :class:`IGPTError` naming the problem); ``None`` (no multi-layer probe) passes."""
    if k is None:
        return
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise IGPTError(f"the multi-layer probe needs a positive, odd number of layers, not {k!r}")
    if k % 2 == 0:
        raise IGPTError(
            f"the multi-layer probe needs an odd number of layers (K centred on the best "
            f"layer), not {k}"
        )
    if k > n_layers:
        raise IGPTError(f"cannot concatenate {k} layers: only {n_layers} are probed")
    if method != "lbfgs":
        raise IGPTError(
            f"the multi-layer probe is an L-BFGS probe; it needs method lbfgs, not {method}"
        )


def concat_span(layers: list[int], centre: int, k: int) -> list[int]:
    """The ``k`` consecutive entries of ``layers`` (sorted, as probed) centred on
    ``centre``, shifted inwards where the window would run past either end."""
    check_concat(k, len(layers))
    i = layers.index(centre)
    start = min(max(i - k // 2, 0), len(layers) - k)
    return list(layers[start : start + k])


def concat_site(layers: list[int], sites: list[str]) -> str:
    """The site name of a concatenation: ``concat(first..last)`` for consecutive
    ``layers``, else every site, ``concat(a+b+c)`` (a hand-picked ``--layers`` list)."""
    if layers == list(range(layers[0], layers[0] + len(layers))):
        return f"concat({sites[0]}..{sites[-1]})"
    return f"concat({'+'.join(sites)})"


def probe_concat(
    feats: dict,
    layers: list[int],
    sites: list[str],
    centre: int,
    k: int,
    *,
    meta: dict,
    protocol: Protocol | None = None,
) -> Scored:
    """Rows and test predictions of the multi-layer probe of ``k`` layers around
    ``centre``: ``feats`` maps each split to its :class:`~igpt_eval.probes.protocol.Features`
    (G, N, d) of ``layers`` (named ``sites``), probed under ``protocol``
    (:func:`~igpt_eval.probes.protocol.probe_lbfgs`)."""
    span = concat_span(layers, centre, k)
    idx = [layers.index(x) for x in span]
    site = concat_site(span, [sites[i] for i in idx])

    def join(f: Features) -> Features:
        # (K, N, d) → (1, N, K·d): each row holds the K layers' features side by side.
        return Features(np.concatenate(list(f.X[idx]), axis=1)[None], f.y)

    rows, pred = probe_lbfgs(
        *(join(feats[s]) for s in ("train", "val", "test")),
        [centre],
        meta=meta,
        sites=[site],
        protocol=protocol,
        probe=CONCAT,
    )
    return Scored([row(r, concat_layers=k) for r in rows], pred)
