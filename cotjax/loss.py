"""Training objectives as token sums: the seam through which the Trainer gets its loss.

An objective turns (model, batch) into a dict of scalar sums over the batch. Two of them define
the loss, `sums["num"] / sums["den"]`; the rest are metrics. Sums, not means, so that gradient
accumulation and data parallelism are exact: micro-batches' and devices' sums are added before
dividing. `keys` names every sum (the Trainer's accumulators and log aggregation read it) and
`summarize` turns summed sums into the metrics a run prints.

The CoT loss is per weighted token over the global batch (see `cotjax.tokenize`),

    loss = sum_{b,t} w[b,t] * ce[b,t] / sum_{b,t} w[b,t]

Chain and answer tokens are told apart by the pipeline's per-token `kinds` array (0 none,
1 chain, 2 answer and EOS), so the metrics report the chain and the answer loss separately.
Other objectives (a process reward model's step labels, an outcome reward) plug in here with
their own sums, without a second training loop.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from cotjax.defaults import OBJECTIVES, REWARD_OBJECTIVES
from cotjax.tokenize import KIND_ANSWER, KIND_CHAIN


class Objective(Protocol):
    keys: tuple[str, ...]  # every sum `sums` returns, "num" and "den" among them

    def sums(self, model, batch) -> dict[str, jax.Array]: ...

    def summarize(self, sums: dict) -> dict[str, float]: ...


def _div(a, b) -> float:
    return float(a) / float(b) if float(b) > 0 else float("nan")


def token_sums(logits_BTV, targets_BT, weights_BT, kinds_BT, segment_ids_BT) -> dict:
    """Token sums of one (micro-)batch: weighted CE (num) and weights (den), chain/answer CE and
    counts, correct answer tokens, tokens and non-padding tokens."""
    logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    tgt_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    ce_BT = logz_BT - tgt_BT
    # A target is predicted when its logit is the maximum (a tie counts as correct): cheaper
    # than comparing with argmax, whose variadic reduce XLA CPU does not vectorise.
    hit_BT = tgt_BT >= jnp.max(logits_BTV, axis=-1)
    chain = (kinds_BT == KIND_CHAIN).astype(jnp.float32)
    answer = (kinds_BT == KIND_ANSWER).astype(jnp.float32)
    return {
        "num": jnp.sum(weights_BT * ce_BT),
        "den": jnp.sum(weights_BT),
        "chain_ce": jnp.sum(chain * ce_BT),
        "chain_n": jnp.sum(chain),
        "answer_ce": jnp.sum(answer * ce_BT),
        "answer_n": jnp.sum(answer),
        "answer_correct": jnp.sum(answer * hit_BT),
        "tokens": jnp.asarray(targets_BT.size, jnp.float32),
        "nonpad": jnp.sum((segment_ids_BT != 0).astype(jnp.float32)),
    }


def chunked_token_sums(model, x_BTD, batch, chunk: int) -> dict:
    """`token_sums` of the hidden states `x` taken `chunk` positions at a time: each chunk's
    logits are made, reduced to sums and dropped, and made again in the backward pass, so a
    step never holds the [B, T, V] logits (Gemma's 262k vocabulary at 8 x 1024 tokens: 8.6 GB
    in float32) but only [B, chunk, V]."""
    B, T, _ = x_BTD.shape
    keys = ("targets", "weights", "kinds", "segment_ids")

    def pieces(a):  # [B, T, ...] -> [T / chunk, B, chunk, ...]
        return a.reshape(B, T // chunk, chunk, *a.shape[2:]).swapaxes(0, 1)

    @jax.checkpoint
    def body(total, xs):
        x, *rest = xs
        s = token_sums(model.logits(x), *rest)
        return jax.tree.map(jnp.add, total, s), None

    xs = (pieces(x_BTD), *(pieces(batch[k]) for k in keys))
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                         jax.eval_shape(lambda: token_sums(model.logits(x_BTD[:, :chunk]),
                                                           *(batch[k][:, :chunk] for k in keys))))
    return jax.lax.scan(body, zeros, xs)[0]


def target_capacities(T: int, chunk: int = 0) -> tuple[int, ...]:
    """The row lengths `target_index` cuts to at sequence length T: multiples of T/8 (of
    `chunk` when T/8 is smaller, so each is a whole number of chunks) up to T itself."""
    step = T // 8 if T % 8 == 0 else T
    if 0 < chunk < T:
        step = chunk * max(1, step // chunk)
    return tuple(sorted({*range(step, T, step), T}))


def target_index(batch: dict[str, np.ndarray], chunk: int = 0, need: int | None = None
                 ) -> np.ndarray:
    """[B, C] positions of each row for `target_token_sums`, on the host: the row's loss
    positions (chain, answer) first, in order, then the rest; C the smallest of
    `target_capacities` that holds `need` (default: the fullest row of this batch, and in a
    multi-process run of every process's, so that all compile the same shape)."""
    loss = (np.asarray(batch["weights"]) > 0) | (np.asarray(batch["kinds"]) != 0)
    if need is None:
        need = int(loss.sum(1).max())
        if jax.process_count() > 1:  # every process must cut its rows to the same length
            from jax.experimental import multihost_utils
            need = int(np.max(multihost_utils.process_allgather(np.int32(need))))
    C = next(c for c in target_capacities(loss.shape[1], chunk) if c >= need)
    return np.argsort(~loss, axis=1, kind="stable")[:, :C].astype(np.int32)


def target_token_sums(model, x_BTD, batch, chunk: int = 0) -> dict:
    """`token_sums` with logits made only at `batch["target_index"]` (`target_index`;
    `train.target_logits_only`): the prompt and padding, 44-52% of GSM8K's packed tokens, never
    reach the LM head. The positions past a row's own loss count are prompt or padding, weight 0
    and kind 0: they add nothing. One compiled step per capacity the batches need (the shape of
    the index), not a device-side `lax.switch` over capacities: that ran slower than the full
    logits (measured; under the gradient a switch probably keeps every branch's residuals)."""
    B, T, _ = x_BTD.shape
    keys = ("targets", "weights", "kinds", "segment_ids")
    idx = batch["target_index"]
    x = jnp.take_along_axis(x_BTD, idx[..., None], axis=1)
    sub = {k: jnp.take_along_axis(batch[k], idx, axis=1) for k in keys}
    C = idx.shape[1]
    if 0 < chunk < C:
        s = chunked_token_sums(model, x, sub, chunk)
    else:
        s = token_sums(model.logits(x), *(sub[k] for k in keys))
    s["tokens"] = jnp.asarray(B * T, jnp.float32)  # counted over the whole rows
    s["nonpad"] = jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32))
    return s


class CoTLoss:
    """Next-token cross-entropy weighted per token (prompt 0, chain w_chain, answer w_answer).
    `chunk` > 0 (`train.loss_chunk`): the logits are made `chunk` positions at a time
    (`chunked_token_sums`); `targets_only` (`train.target_logits_only`): only at the positions
    with a loss (`target_token_sums`). The sums are the same up to float rounding."""

    keys = ("num", "den", "chain_ce", "chain_n", "answer_ce", "answer_n", "answer_correct",
            "tokens", "nonpad")

    def __init__(self, chunk: int = 0, targets_only: bool = False):
        self.chunk = chunk
        self.targets_only = targets_only

    def sums(self, model, batch) -> dict[str, jax.Array]:
        T = batch["inputs"].shape[1]
        if 0 < self.chunk < T and T % self.chunk:
            raise ValueError(f"train.loss_chunk={self.chunk} must divide the sequence "
                             f"length {T}")
        if self.targets_only or 0 < self.chunk < T:
            x_BTD, _ = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
            if self.targets_only:
                if "target_index" not in batch:
                    raise ValueError("train.target_logits_only: the batch has no target_index "
                                     "(the Trainer adds it: cotjax.loss.target_index)")
                return target_token_sums(model, x_BTD, batch, self.chunk)
            return chunked_token_sums(model, x_BTD, batch, self.chunk)
        logits_BTV, _ = model(batch["inputs"], batch["positions"], batch["segment_ids"])
        return token_sums(logits_BTV, batch["targets"], batch["weights"], batch["kinds"],
                          batch["segment_ids"])

    def summarize(self, s: dict) -> dict[str, float]:
        return {"loss": _div(s["num"], s["den"]), "chain_loss": _div(s["chain_ce"], s["chain_n"]),
                "answer_loss": _div(s["answer_ce"], s["answer_n"]),
                "answer_acc": _div(s["answer_correct"], s["answer_n"]),
                "nonpad_frac": _div(s["nonpad"], s["tokens"])}


# Score histograms for AUROC from sums: 512 bins over logits in [-12, 12] (exact up to ties
# within a bin; by logit, not probability, so confident scores above 0.998 still separate).
AUROC_BINS, AUROC_RANGE = 512, 12.0


def reward_sums(z_BT, labels_BT, weights_BT, segment_ids_BT) -> dict:
    """Sums of a reward model's logits `z` against labels in [0, 1] where `weights` > 0:
    weighted binary cross-entropy (num, den), agreement of `z > 0` with the hard label
    (label > 0: Math-Shepherd's hard label is "some completion reached the gold answer", so a
    soft label counts as positive when it is above 0), and score histograms of the positive
    and negative positions (for AUROC)."""
    w = weights_BT.astype(jnp.float32)
    y = labels_BT.astype(jnp.float32)
    bce = jax.nn.softplus(z_BT) - y * z_BT  # -[y log s(z) + (1 - y) log(1 - s(z))]
    hard = (y > 0).astype(jnp.float32)
    unit = (jnp.clip(z_BT, -AUROC_RANGE, AUROC_RANGE) + AUROC_RANGE) / (2 * AUROC_RANGE)
    bins = jnp.clip((unit * AUROC_BINS).astype(jnp.int32), 0, AUROC_BINS - 1)
    hist = lambda m: jnp.zeros(AUROC_BINS, jnp.float32).at[bins.ravel()].add(m.ravel())  # noqa: E731
    return {"num": jnp.sum(w * bce), "den": jnp.sum(w),
            "label_correct": jnp.sum(w * ((z_BT > 0) == (hard > 0))),
            "label_pos": jnp.sum(w * hard),
            "hist_pos": hist(w * hard), "hist_neg": hist(w * (1 - hard)),
            "tokens": jnp.asarray(labels_BT.size, jnp.float32),
            "nonpad": jnp.sum((segment_ids_BT != 0).astype(jnp.float32))}


def auroc(hist_pos, hist_neg) -> float:
    """Area under the ROC curve from score histograms over the same bins (ties count half)."""
    pos, neg = np.asarray(hist_pos, np.float64), np.asarray(hist_neg, np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos <= 0 or n_neg <= 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))


class RewardLoss:
    """Binary cross-entropy of a reward model's scores at labelled positions (the step ends
    of a process reward model, the chain's end for an outcome reward model); no loss
    elsewhere. The batch carries `labels` (float, at the position that is scored) and
    `weights` (1 where a label is read, else 0; not shifted: the hidden state of a step's
    last token scores the step)."""

    keys = ("num", "den", "label_correct", "label_pos", "hist_pos", "hist_neg", "tokens",
            "nonpad")

    def sums(self, model, batch) -> dict[str, jax.Array]:
        x_BTD, _ = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
        return reward_sums(model.reward(x_BTD), batch["labels"], batch["weights"],
                           batch["segment_ids"])

    def summarize(self, s: dict) -> dict[str, float]:
        return {"loss": _div(s["num"], s["den"]),
                "label_acc": _div(s["label_correct"], s["den"]),
                "label_pos_frac": _div(s["label_pos"], s["den"]),
                "auroc": auroc(s["hist_pos"], s["hist_neg"]),
                "nonpad_frac": _div(s["nonpad"], s["tokens"])}


def make_objective(name: str, loss_chunk: int = 0, target_logits_only: bool = False
                   ) -> Objective:
    """The objective of `train.objective`: cot (the CoT loss, its logits `loss_chunk` positions
    at a time, only at loss positions with `target_logits_only`), prm or orm (RewardLoss; the
    two differ in where the data puts labels, not in the loss)."""
    if name == "cot":
        return CoTLoss(loss_chunk, target_logits_only)
    if name in REWARD_OBJECTIVES:
        return RewardLoss()
    raise ValueError(f"train.objective must be one of {OBJECTIVES}, got {name!r}")
