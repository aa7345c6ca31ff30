"""How well a model predicts pixels: its test loss, bits per dimension and next-pixel
accuracy (:func:`model_metrics`), beside simple token baselines (:func:`token_baselines`),
as a model card reports them (:mod:`igpt_eval.reporting.modelcard`).

Baselines, all in nats per token on the test tokens (:func:`token_baselines`):

- *unigram*: every pixel drawn from the train split's colour frequencies (add-one smoothed).
  An AR model whose loss is not below this has learned nothing beyond colour frequencies.
- *previous pixel*: a bigram ``P(x_t | x_{t-1})`` fitted on train (add-one smoothed; the first
  pixel uses the unigram), and as a hard predictor "repeat the previous pixel" (first pixel:
  the most frequent train colour). Natural images are smooth, so this is a strong baseline.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from igpt_eval.errors import IGPTError
from igpt_eval.train.pretrain import evaluate

_CHUNK = 4096  # rows of a token memmap read at a time: memory stays bounded for any N


# ------------------------------------------------------------------ measurements
def _chunks(tokens):
    for s in range(0, len(tokens), _CHUNK):
        yield np.asarray(tokens[s : s + _CHUNK], dtype=np.int64)


def _counts(tokens, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(colour counts [k], first-pixel counts [k], (previous, next) pair counts [k, k])."""
    uni, first, pairs = np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k * k, np.int64)
    for x in _chunks(tokens):
        if x.size and (x.min() < 0 or x.max() >= k):
            raise IGPTError(f"token ids must lie in [0, {k}), got range [{x.min()}, {x.max()}]")
        uni += np.bincount(x.ravel(), minlength=k)
        first += np.bincount(x[:, 0], minlength=k)
        # Pairs in raster order: a row's first pixel follows the previous row's last.
        pairs += np.bincount((x[:, :-1] * k + x[:, 1:]).ravel(), minlength=k * k)
    return uni, first, pairs.reshape(k, k)


def token_baselines(train_tokens, test_tokens, k: int) -> dict:
    """Simple predictors fitted on ``train_tokens`` and scored on ``test_tokens`` (both
    ``[N, T]`` palette ids; memmaps are read in chunks), in nats per token.

    Returns ``uniform`` (ln k), ``unigram_ce`` (test cross-entropy under the add-one smoothed
    train unigram), ``test_unigram_entropy`` (entropy of the test colours themselves),
    ``unigram_accuracy`` (always the most frequent train colour), ``prev_pixel_accuracy``
    (repeat the previous pixel; the first pixel gets the most frequent train colour) and
    ``bigram_ce`` (add-one smoothed ``P(x_t | x_{t-1})`` from train; the first pixel scored
    under the unigram).
    """
    train_tokens, test_tokens = np.asarray(train_tokens), np.asarray(test_tokens)
    for name, t in (("train", train_tokens), ("test", test_tokens)):
        if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise IGPTError(f"{name} tokens must be a non-empty [N, T] array, got {t.shape}")
    uni_tr, _, pairs_tr = _counts(train_tokens, k)
    uni_te, first_te, pairs_te = _counts(test_tokens, k)
    n_te = uni_te.sum()

    log_p = np.log((uni_tr + 1) / (uni_tr.sum() + k))  # add-one smoothed unigram
    log_bigram = np.log((pairs_tr + 1) / (pairs_tr.sum(1, keepdims=True) + k))
    p_te = uni_te[uni_te > 0] / n_te
    mode = int(np.argmax(uni_tr))
    return {
        "uniform": math.log(k),
        "unigram_ce": float(-(uni_te @ log_p) / n_te),
        "test_unigram_entropy": float(-(p_te * np.log(p_te)).sum()),
        "unigram_accuracy": float(uni_te[mode] / n_te),
        "prev_pixel_accuracy": float((np.trace(pairs_te) + first_te[mode]) / n_te),
        "bigram_ce": float(-((pairs_te * log_bigram).sum() + first_te @ log_p) / n_te),
    }


@torch.no_grad()
def model_metrics(model, tokens, batch_size: int = 256) -> dict:
    """Test loss of ``model`` on ``tokens`` in nats per token (the same measure as the
    validation loss in training: ``pretrain.evaluate``, BERT masks from its fixed seed) and
    bits per dimension; for AR models also the next-pixel accuracy of the argmax colour,
    from the same forward pass as the loss."""
    if len(tokens) == 0:
        raise IGPTError("no test tokens to measure the model on")
    if model.config.objective != "ar":
        loss = evaluate(model, tokens, batch_size=batch_size)
        return {"loss": loss, "bits_per_dim": loss / math.log(2), "accuracy": None}
    was_training = model.training
    model.eval()
    nll = hits = total = 0.0
    for s in range(0, len(tokens), batch_size):
        x = torch.from_numpy(np.asarray(tokens[s : s + batch_size], dtype=np.int64))
        x = x.to(model.device)
        logits = model(x).flatten(0, 1).float()  # (B·T, k): the AR loss's logits
        nll += F.cross_entropy(logits, x.flatten(), reduction="sum").item()
        hits += (logits.argmax(-1) == x.flatten()).sum().item()
        total += x.numel()
    model.train(was_training)
    return {
        "loss": nll / total,
        "bits_per_dim": nll / total / math.log(2),
        "accuracy": hits / total,
    }
