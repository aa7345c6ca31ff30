"""kNN and CKA over the activation caches of every layer, as tidy rows.

:func:`knn_rows` is DINO's weighted kNN (:func:`~igpt_eval.analysis.similarity.knn_accuracy`) of
every cached layer, scored like a probe (test against a train + val bank, validation against
a train-only bank); :func:`cka_rows` is linear CKA between every pair of layers within and
across models, on the test split (rows in :data:`igpt_eval.results.CKA_COLUMNS`). Both are
what :func:`igpt_eval.studies.compare.compare_models` adds to the linear probes.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from igpt_eval.analysis.similarity import cka_matrix, knn_accuracy
from igpt_eval.errors import IGPTError
from igpt_eval.names import SPLITS, Metric, Probe
from igpt_eval.predictions import Predictions, Scored, prediction_key
from igpt_eval.results import CKA_COLUMNS, row
from igpt_eval.stats import bootstrap_accuracy_ci


def knn_rows(
    caches: dict,
    meta: dict,
    *,
    k=20,
    temperature=0.07,
    device="cpu",
    seed=0,
) -> Scored:
    """kNN accuracy of every cached layer, as tidy rows: test queries against a train + val
    bank (``split = "test"``, with a bootstrap 95% CI: the reported number), and validation
    queries against a train-only bank (``split = "val"``: what a kNN layer is chosen by, so
    that the test split chooses nothing). With the rows, every layer's predicted test labels,
    named ``{model}/knn/{site}``."""
    train, val, test = (caches[s] for s in SPLITS)
    bank_y = np.concatenate([train.labels, val.labels])
    knn = dict(k=k, temperature=temperature, device=device)
    rows, predictions = [], Predictions()
    for layer, site in zip(test.layers, test.sites, strict=True):
        common = row(
            meta,
            layer=layer,
            site=site,
            probe=Probe.KNN,
            backend="torch",
            C=np.nan,
            lr=np.nan,
            metric=Metric.ACCURACY,
            seed=seed,
            selected=True,
            k=k,
            temperature=temperature,
        )
        t0 = time.perf_counter()
        X_train = np.asarray(train[layer], np.float32)
        bank = np.concatenate([X_train, np.asarray(val[layer], np.float32)])
        r = knn_accuracy(bank, bank_y, test[layer], test.labels, **knn)
        lo, hi = bootstrap_accuracy_ci(r.correct, seed=seed)
        t1 = time.perf_counter()
        rows.append(
            row(
                common,
                split="test",
                value=r.accuracy,
                ci_low=lo,
                ci_high=hi,
                seconds=t1 - t0,
                n_train=len(bank_y),
                n_eval=len(r.correct),
            )
        )
        v = knn_accuracy(X_train, train.labels, val[layer], val.labels, **knn)
        rows.append(
            row(
                common,
                split="val",
                value=v.accuracy,
                seconds=time.perf_counter() - t1,
                n_train=len(train.labels),
                n_eval=len(v.correct),
            )
        )
        predictions.add(prediction_key(meta.get("model", ""), "knn", site), r.pred, test.labels)
    return Scored(rows, predictions)


def cka_rows(caches: dict, dataset: str, max_rows: int | None = 10_000, seed: int = 0):
    """Linear CKA on the test split: layer × layer within each model and between every pair
    of models (``caches`` maps a model name to its test cache). ``max_rows`` subsamples the
    rows (the same rows for every model) to bound the cost."""
    names = list(caches)
    labels = caches[names[0]].labels
    for n in names[1:]:
        if not np.array_equal(caches[n].labels, labels):
            raise IGPTError(f"the test caches of {names[0]} and {n} hold different images")
    rows_idx = np.arange(len(labels))
    if max_rows is not None and len(rows_idx) > max_rows:
        rng = np.random.default_rng(seed)
        rows_idx = np.sort(rng.choice(len(labels), max_rows, replace=False))

    def feats(c):
        return [np.asarray(c[layer][rows_idx], np.float32) for layer in c.layers]

    out = []
    for i, a in enumerate(names):
        for b in names[i:]:
            ca, cb = caches[a], caches[b]
            M = cka_matrix(feats(ca), None if a == b else feats(cb))
            for i_a, i_b in np.ndindex(*M.shape):
                out.append(
                    dict(
                        dataset=dataset,
                        split="test",
                        model_a=a,
                        layer_a=ca.layers[i_a],
                        site_a=ca.sites[i_a],
                        model_b=b,
                        layer_b=cb.layers[i_b],
                        site_b=cb.sites[i_b],
                        value=M[i_a, i_b],
                        n=len(rows_idx),
                    )
                )
    return pd.DataFrame(out, columns=CKA_COLUMNS)
