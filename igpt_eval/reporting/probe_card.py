"""The linear-probe section of a model card, written from a results table.

``igpt-eval model-card --probe-results`` (:func:`set_probe_section`) replaces this one
section of a checkpoint's ``MODEL_CARD.md`` and leaves the rest (measured by
:func:`igpt_eval.reporting.modelcard.write_model_card`) as it was. Several results files
(say the default training sample and ``--train-size all``) make one subsection each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from igpt_eval.analysis.paired import paired_lines
from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.names import Metric
from igpt_eval.reporting.templates import render
from igpt_eval.results import probe_train_size, summary

#: A checkpoint folder's model card.
CARD = "MODEL_CARD.md"

PROBE_HEADING = "## Linear probes"


def probe_section(results, model: str, source: str) -> str:
    """The card's linear-probe section for ``model``: one row per layer (test accuracy with
    its 95% CI, the C (L-BFGS) or learning rate (SGD) chosen on validation), the layer
    chosen on validation marked, then its paired differences to the last layer and to the
    raw pixels when the results hold them; from the tidy ``results`` (``source`` names the
    file, ``igpt-eval probe``/``compare`` output). The words: ``templates/probe_card.md``."""
    return probe_sections([(results, source)], model)


def probe_sections(parts, model: str) -> str:
    """One linear-probe section from several ``(results, source)`` runs of ``model``, each
    under its own subheading naming its training sample (probes on the default sample
    beside probes on the whole training split); a single run is :func:`probe_section`."""
    parts = list(parts)
    several = len(parts) > 1
    return render("probe_card", runs=[_probe_run(r, model, s, several) for r, s in parts])


def _probe_run(results, model: str, source: str, subheading: bool) -> dict:
    """What the section says of one probe run of ``model`` (with the size of its training
    sample for a ``subheading``)."""
    mine = results[(results.model == model) & (results.probe.isin(["lbfgs", "sgd"]))]
    df = mine[mine.metric != Metric.DIFF]  # the paired-difference rows are read below
    if df.empty:
        raise IGPTError(f"{source} holds no probe results for {model!r}")
    if df[df.split == "test"].duplicated(["layer", "metric"]).any():
        raise IGPTError(
            f"{source} holds several probe runs of {model!r} (e.g. a low-data study's seeds); "
            "give the results of one igpt-eval probe or compare run"
        )
    s = summary(df)
    val = df[df.split == "val"].iloc[0]
    test = df[df.split == "test"].iloc[0]
    probe = df.probe.iloc[0]
    masks = None  # what a BERT model saw at extraction: None, 0 (unmasked) or the masks
    bert = pd.notna(val.get("objective")) and val.get("objective") == "bert"
    if bert and pd.notna(val.get("bert_masks", np.nan)):
        masks = int(val.bert_masks)
    layers = [
        dict(
            layer=r.layer,
            best=r.best,
            site=r.site,
            acc=f"{100 * r.test_acc:.2f}% [{100 * r.ci_low:.2f}, {100 * r.ci_high:.2f}]",
            hyper=f"{r.lr if probe == 'sgd' else r.C:.3g}",
        )
        for r in s.itertuples()
    ]
    diffs = mine[(mine.metric == Metric.DIFF) & (mine.probe == probe)]
    return dict(
        probe=probe,
        site_kind=val.site_kind,
        masks=masks,
        n_val=f"{int(val.n_eval):,}",
        n_train=f"{int(val.n_train):,}",
        n_test=f"{int(test.n_eval):,}",
        source=source,
        train_size=f"{probe_train_size(results, model):,}" if subheading else None,
        layers=layers,
        paired=paired_lines(diffs) if len(diffs) else [],
    )


def set_probe_section(model_dir: str | Path, results, model: str, source) -> Path:
    """Replace (or add, before the figures) the linear-probe section of ``model_dir``'s
    ``MODEL_CARD.md``; the rest of the card is left as it was. ``results`` and ``source``
    may be lists (one subsection per run, in that order)."""
    card = Path(model_dir) / CARD
    if not card.is_file():
        raise IGPTError(f"{card} does not exist; write the card first (igpt-eval model-card)")
    text = card.read_text()
    if isinstance(results, (list, tuple)):
        section = probe_sections(zip(results, source, strict=True), model)
    else:
        section = probe_section(results, model, source)
    if PROBE_HEADING in text:
        head, _, rest = text.partition(PROBE_HEADING)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1 :] if nxt >= 0 else ""
        text = head + section + ("\n" + tail if tail else "")
    elif "\n## Figures" in text:
        head, _, tail = text.partition("\n## Figures")
        text = head + "\n" + section + "\n## Figures" + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with atomic_write(card, "w") as f:
        f.write(text)
    return card
