"""Connectionist temporal classification: the loss of reading a label from a sequence of
frames without knowing which frames hold which character, and its gradient.

Class 0 is the blank. The forward-backward sums run in log space over every sample of a
batch at once (labels padded to the longest); the gradient is taken with respect to the
logits (the log-softmax is part of the loss), which is what the network's backward pass
needs. :func:`ctc_loss` is an autograd primitive with that gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Array = np.ndarray[Any, np.dtype[Any]]
_NEG = -1e30  # log(0) that stays finite through additions


def log_softmax(logits: Array) -> Array:
    """``logits`` (..., classes) as log probabilities, in float64."""
    values = np.asarray(logits, dtype=np.float64)
    shifted = values - values.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # type: ignore[no-any-return]


def _logaddexp3(a: Array, b: Array, c: Array) -> Array:
    top = np.maximum(np.maximum(a, b), c)
    return top + np.log(np.exp(a - top) + np.exp(b - top) + np.exp(c - top))  # type: ignore[no-any-return]


def _extended(labels: Sequence[Sequence[int]]) -> tuple[Array, Array, Array]:
    """Each label with blanks around and between its characters (padded with blanks to the
    longest), each one's extended length, and where a skip over a blank is allowed."""
    longest = max((len(label) for label in labels), default=0)
    size = 2 * longest + 1
    extended = np.zeros((len(labels), size), dtype=np.int64)
    lengths = np.array([2 * len(label) + 1 for label in labels], dtype=np.int64)
    for row, label in enumerate(labels):
        extended[row, 1 : 2 * len(label) : 2] = label
    skip = np.zeros_like(extended, dtype=bool)
    # s may come from s-2 when l'_s is a character different from l'_{s-2}.
    skip[:, 2:] = (extended[:, 2:] != 0) & (extended[:, 2:] != extended[:, :-2])
    return extended, lengths, skip


def _emissions(log_probs: Array, extended: Array) -> Array:
    """The log probability of each extended position's class at each frame (batch x frames
    x size)."""
    batch, frames, _ = log_probs.shape
    rows = np.arange(batch)[:, None]
    return log_probs[rows[:, :, None], np.arange(frames)[None, :, None], extended[:, None, :]]


def _alpha(emit: Array, lengths: Array, skip: Array, valid: Array) -> Array:
    """The forward sums: the log probability of each prefix of the extended label ending at
    each frame (batch x frames x size)."""
    batch, frames, size = emit.shape
    alpha = np.full((batch, frames, size), _NEG)
    alpha[:, 0, 0] = emit[:, 0, 0]
    alpha[:, 0, 1] = np.where(lengths > 1, emit[:, 0, 1], _NEG)
    for t in range(1, frames):
        previous = alpha[:, t - 1]
        one = np.concatenate([np.full((batch, 1), _NEG), previous[:, :-1]], axis=1)
        two = np.concatenate([np.full((batch, 2), _NEG), previous[:, :-2]], axis=1)
        two = np.where(skip, two, _NEG)
        alpha[:, t] = np.where(valid, _logaddexp3(previous, one, two) + emit[:, t], _NEG)
    return alpha


def _ending(alpha: Array, lengths: Array) -> Array:
    """Each label's log-likelihood: the paths that end on its last character or the blank
    after it."""
    batch, frames, _ = alpha.shape
    last = lengths - 1
    end = alpha[np.arange(batch), frames - 1, last]
    before_end = np.where(
        lengths > 1, alpha[np.arange(batch), frames - 1, np.maximum(last - 1, 0)], _NEG
    )
    return np.logaddexp(end, before_end)  # type: ignore[no-any-return]


def labelling_probability(probabilities: Array, label: Sequence[int]) -> float:
    """The probability that ``probabilities`` (frames x classes, each row summing to 1,
    class 0 the blank) read as ``label`` (class indices), summed over every alignment of it
    to the frames: in [0, 1]; 0 when the frames cannot hold it.

    Every reading asks this once, so it is the forward sum of one label in linear space,
    rescaled at each frame (the rescaling keeps it from underflowing), through a matrix of
    the allowed moves: a third of the time of the log-space sums training uses."""
    if probabilities.shape[0] == 0:
        return 0.0
    extended, _, skip = _extended([label])
    size = extended.shape[1]
    moves = np.eye(size) + np.eye(size, k=1)
    skips_to = np.flatnonzero(skip[0])
    moves[skips_to - 2, skips_to] = 1.0
    emit = np.asarray(probabilities, dtype=np.float64)[:, extended[0]]
    alpha = np.zeros(size)
    alpha[:2] = emit[0, :2]  # a path starts on the first blank or the first character
    log_scale = 0.0
    for t in range(1, emit.shape[0]):
        total = alpha.sum()
        if total <= 0.0:
            return 0.0
        log_scale += math.log(total)
        alpha = (alpha / total) @ moves * emit[t]
    ending = alpha[-2:].sum()  # it ends on the last character or the blank after it
    if ending <= 0.0:
        return 0.0
    return min(1.0, math.exp(log_scale + math.log(ending)))


def ctc_loss_and_gradient(logits: Array, labels: Sequence[Sequence[int]]) -> tuple[Array, Array]:
    """The negative log-likelihood of each label (batch,) given ``logits`` (batch x frames x
    classes), and its gradient with respect to the logits. A label the frames cannot hold
    (too long) has an infinite loss and a zero gradient."""
    log_probs = log_softmax(logits)
    batch, frames, _ = log_probs.shape
    extended, lengths, skip = _extended(labels)
    size = extended.shape[1]
    emit = _emissions(log_probs, extended)
    valid = np.arange(size)[None, :] < lengths[:, None]  # batch x size
    alpha = _alpha(emit, lengths, skip, valid)
    beta = np.full((batch, frames, size), _NEG)
    last = lengths - 1
    beta[np.arange(batch), frames - 1, last] = emit[np.arange(batch), frames - 1, last]
    has_two = lengths > 1
    beta[np.arange(batch)[has_two], frames - 1, last[has_two] - 1] = emit[
        np.arange(batch)[has_two], frames - 1, last[has_two] - 1
    ]
    # s may go on to s+2 when s+2 may come from s.
    skip_ahead = np.zeros_like(skip)
    skip_ahead[:, :-2] = skip[:, 2:]
    for t in range(frames - 2, -1, -1):
        following = beta[:, t + 1]
        one = np.concatenate([following[:, 1:], np.full((batch, 1), _NEG)], axis=1)
        two = np.concatenate([following[:, 2:], np.full((batch, 2), _NEG)], axis=1)
        two = np.where(skip_ahead, two, _NEG)
        beta[:, t] = np.where(valid, _logaddexp3(following, one, two) + emit[:, t], _NEG)
    log_likelihood = _ending(alpha, lengths)
    feasible = log_likelihood > _NEG / 2
    loss = np.where(feasible, -log_likelihood, np.inf)
    # Posterior of each extended position at each frame, added up per class.
    posterior = np.exp(alpha + beta - emit - np.where(feasible, log_likelihood, 0.0)[:, None, None])
    posterior = np.where(valid[:, None, :], posterior, 0.0)
    one_hot = extended[:, :, None] == np.arange(log_probs.shape[2])[None, None, :]
    occupancy = np.einsum("bts,bsk->btk", posterior, one_hot)
    gradient = np.exp(log_probs) - occupancy
    gradient[~feasible] = 0.0
    return loss, gradient


def _primitive() -> Any:
    from autograd.extend import defvjp, primitive

    def ctc_mean_loss(logits: Array, labels: Sequence[Sequence[int]]) -> Any:
        loss, _ = ctc_loss_and_gradient(logits, labels)
        return float(np.mean(np.where(np.isfinite(loss), loss, 0.0)))

    def gradient_maker(ans: Any, logits: Array, labels: Sequence[Sequence[int]]) -> Any:
        _, gradient = ctc_loss_and_gradient(logits, labels)
        scaled = (gradient / len(labels)).astype(logits.dtype)
        return lambda g: g * scaled

    differentiable = primitive(ctc_mean_loss)
    defvjp(differentiable, gradient_maker)
    return differentiable


_CTC_MEAN_LOSS: Any = None


def ctc_loss(logits: Any, labels: Sequence[Sequence[int]]) -> Any:
    """The mean CTC loss of a batch (infeasible labels count 0), differentiable by autograd
    with respect to ``logits`` (batch x frames x classes)."""
    global _CTC_MEAN_LOSS
    if _CTC_MEAN_LOSS is None:
        _CTC_MEAN_LOSS = _primitive()
    return _CTC_MEAN_LOSS(logits, labels)
