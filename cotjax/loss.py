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


class CoTLoss:
    """Next-token cross-entropy weighted per token (prompt 0, chain w_chain, answer w_answer)."""

    keys = ("num", "den", "chain_ce", "chain_n", "answer_ce", "answer_n", "answer_correct",
            "tokens", "nonpad")

    def sums(self, model, batch) -> dict[str, jax.Array]:
        logits_BTV, _ = model(batch["inputs"], batch["positions"], batch["segment_ids"])
        return token_sums(logits_BTV, batch["targets"], batch["weights"], batch["kinds"],
                          batch["segment_ids"])

    def summarize(self, s: dict) -> dict[str, float]:
        return {"loss": _div(s["num"], s["den"]), "chain_loss": _div(s["chain_ce"], s["chain_n"]),
                "answer_loss": _div(s["answer_ce"], s["answer_n"]),
                "answer_acc": _div(s["answer_correct"], s["answer_n"]),
                "nonpad_frac": _div(s["nonpad"], s["tokens"])}
