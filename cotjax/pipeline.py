"""The grain input pipeline: records -> weighted examples -> shuffle -> pack -> batch, per process.

    load_examples     read a split, format, tokenize, truncate or drop overlong examples
    packed_dataset    shard by process, shuffle by seed, repeat, pack with grain, batch
    make_train_iterator  both, from a config; a grain DatasetIterator whose get_state/set_state
                         the training loop checkpoints for exact resumption

Each batch is a dict of numpy arrays of shape [batch, seq_len]:

    inputs       int32    token ids (0 at padding)
    targets      int32    targets[t] = inputs[t+1] of the same example (0 at its last token)
    weights      float32  loss weight of predicting targets[t]: the target token's weight
                          (prompt 0, chain w_chain, answer and EOS w_answer); 0 at the last token
                          of each example and at padding
    kinds        int32    what targets[t] is: 0 prompt/padding, 1 chain, 2 answer or EOS
                          (cotjax.tokenize.KIND_*), for separate chain and answer metrics
    segment_ids  int32    1, 2, ... per packed example in the row; 0 is padding
    positions    int32    position within the example, restarting at 0 at each example

Reward objectives (`train.objective` prm | orm) read `data.labels` (a `cotjax label-steps` or
`cotjax sample` output) instead: the same keys plus

    labels       float32  the label of the score read at position t (cotjax.prm.reward_target)

with `weights[t]` 1 where a score is read and trained (not shifted: the hidden state of a step's
last token scores the step) and `kinds` 0. Validation holds out `data.labels_validation` of the
problems (all chains of a problem on one side), seeded by `data.validation_seed`.

No example is split across rows (grain's first-fit/best-fit packing). The batch is the per-process
batch (global batch / process_count); a finite run's last batch is filled with padding rows
(all weights 0) so shapes stay static. Each process reads a fixed shard of the examples, so with
a finite number of epochs processes can differ by a batch at the end; multi-host training should
count steps over a repeated dataset (`data.num_epochs = -1`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import grain
import grain.experimental
import jax
import numpy as np
from absl import logging

from cotjax import prm
from cotjax.defaults import REWARD_OBJECTIVES
from cotjax import records as records_lib
from cotjax.formatting import select_fewshot
from cotjax.records import CoTRecord
from cotjax.tokenize import KIND_ANSWER, EncodeSpec, Example, encode_records, reward_example

OVERLONG = ("drop", "truncate")
PACKERS = {
    "first_fit": grain.experimental.FirstFitPackIterDataset,
    "best_fit": grain.experimental.BestFitPackIterDataset,
}
BATCH_KEYS = ("inputs", "targets", "weights", "kinds", "segment_ids", "positions")
_PACKED_KEYS = ("inputs", "targets", "weights", "kinds")
REWARD_KEYS = ("labels",)  # packed and batched beside the others for reward examples
PERCENTILES = (50, 90, 99, 100)


@dataclasses.dataclass(frozen=True)
class DataReport:
    """What loading a split did; nothing is dropped without being counted here."""

    split: str
    read: int  # raw records read from the source (before the validation hold-out)
    skipped: int  # bad records skipped (on_bad_record="skip")
    examples: int  # examples that reach the packer
    truncated: int  # overlong examples cut to seq_len (overlong="truncate")
    dropped: int  # overlong examples dropped (or truncated to no target token)
    tokens: int  # tokens in the examples that reach the packer
    target_tokens: int  # of which carry a loss weight
    length_percentiles: tuple[tuple[int, int], ...]  # (percentile, tokens) before truncation
    skip_reasons: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PackSpec:
    """How examples are packed and batched on one process."""

    seq_len: int
    batch_size: int  # per process
    seed: int = 0
    shuffle: bool = True
    num_epochs: int = 1  # -1: repeat forever
    packer: str = "first_fit"
    packing_bins: int = 256

    def __post_init__(self):
        if self.packer not in PACKERS:
            raise ValueError(f"data.packer must be one of {sorted(PACKERS)}, got {self.packer!r}")
        if self.num_epochs == 0 or self.num_epochs < -1:
            raise ValueError(f"data.num_epochs must be >= 1 or -1 (forever), got {self.num_epochs}")
        if self.seq_len < 2 or self.batch_size < 1 or self.packing_bins < 1:
            raise ValueError("seq_len must be >= 2, batch_size and packing_bins >= 1")


# ---------------------------------------------------------------------------------------------
# Examples.

def fit_length(examples: Sequence[Example], seq_len: int, overlong: str
               ) -> tuple[list[Example], int, int]:
    """(kept, truncated, dropped): examples longer than seq_len are cut or dropped."""
    if overlong not in OVERLONG:
        raise ValueError(f"data.overlong must be one of {OVERLONG}, got {overlong!r}")
    kept, truncated, dropped = [], 0, 0
    for ex in examples:
        if len(ex) <= seq_len:
            kept.append(ex)
            continue
        # The weight of the first token is never used (nothing predicts it), so a cut that
        # keeps only prompt leaves nothing to learn and is dropped instead.
        if overlong == "truncate" and ex.weights[1:seq_len].any():
            kinds = None if ex.kinds is None else ex.kinds[:seq_len]
            labels = None if ex.labels is None else ex.labels[:seq_len]
            kept.append(Example(ex.tokens[:seq_len], ex.weights[:seq_len], ex.id, kinds, labels))
            truncated += 1
        else:
            dropped += 1
    return kept, truncated, dropped


def reward_objective(config) -> str | None:
    """'prm' or 'orm' when the config trains a reward model, else None."""
    objective = config.get("train", {}).get("objective", "cot")
    return objective if objective in REWARD_OBJECTIVES else None


def held_out_problems(problems: Sequence, share: float, seed: int) -> set:
    """The problems a reward model validates on: `share` of them (at least one), seeded."""
    if not 0 < share < 1:
        raise ValueError(f"data.labels_validation must be in (0, 1), got {share}")
    ordered = sorted(set(problems), key=str)
    if len(ordered) < 2:
        raise ValueError(f"{len(ordered)} problem(s) in data.labels: a reward model needs at "
                         "least 2 (one to validate on)")
    n = min(max(1, round(share * len(ordered))), len(ordered) - 1)
    pick = np.random.default_rng(seed).permutation(len(ordered))[:n]
    return {ordered[i] for i in pick}


def encode_reward_rows(rows, objective: str, labels: str, tokenizer, template: str,
                       task: str = "gsm8k", rule: str = "lines"
                       ) -> tuple[list[Example], list[str]]:
    """(reward examples, skip reasons) of labelled lines ((file:line, row) pairs of
    `prm.read_label_rows`); a line whose generation is empty is skipped (nothing to score)."""
    out, skipped = [], []
    for where, row in rows:
        if isinstance(row.get("generation"), str) and not row["generation"].strip():
            skipped.append(f"{where}: empty generation")
            continue
        generation, ends, values = prm.reward_target(row, objective, labels, where, task, rule)
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: field 'question' must be a non-empty string")
        ex, _ = reward_example(question, generation, ends, values, tokenizer, template,
                               id=f"{row.get('problem')}/{row.get('sample')}")
        out.append(ex)
    return out, skipped


def _reward_examples(config, tokenizer, split: str) -> tuple[list[Example], records_lib.LoadReport]:
    data = config.data
    if not data.get("labels"):
        raise ValueError(f"train.objective={reward_objective(config)} needs --config.data.labels="
                         "DIR (a `cotjax label-steps` output; orm, and prm on checker labels, also "
                         "take `cotjax sample`'s)")
    rows = prm.read_label_rows(data.labels)
    problems = [row.get("problem") for _, row in rows]
    held = held_out_problems(problems, float(data.get("labels_validation", 0.1)),
                             int(data.validation_seed))
    mine = [(w, r) for w, r in rows if (r.get("problem") in held) == (split == "validation")]
    if 0 <= data.max_examples < len(mine) and split == "train":
        mine = mine[:data.max_examples]
    examples, skipped = encode_reward_rows(
        mine, reward_objective(config), config.train.get("reward_labels", "hard"), tokenizer,
        data.template, config.get("eval", {}).get("task", "gsm8k"),
        data.get("labels_split", "lines"))
    return examples, records_lib.LoadReport(read=len(rows), skipped=len(skipped),
                                            skip_reasons=tuple(skipped[:5]))


def load_examples(config, tokenizer, split: str = "train") -> tuple[list[Example], DataReport]:
    """Examples of one split of a config, fitted to `data.seq_len`, with their report."""
    data = config.data
    if reward_objective(config):
        encoded, load = _reward_examples(config, tokenizer, split)
    else:
        recs, load = records_lib.load_records(data, split)
        encoded = encode_records(recs, tokenizer, EncodeSpec.from_config(data))
    lengths = np.array([len(e) for e in encoded])
    kept, truncated, dropped = fit_length(encoded, data.seq_len, data.overlong)
    if not kept:
        raise ValueError(f"split {split!r}: every example is longer than seq_len={data.seq_len}")
    report = DataReport(
        split=split, read=load.read, skipped=load.skipped, examples=len(kept),
        truncated=truncated, dropped=dropped, tokens=sum(len(e) for e in kept),
        target_tokens=sum(int(np.count_nonzero(e.weights[1:])) for e in kept),
        length_percentiles=tuple((p, int(np.percentile(lengths, p))) for p in PERCENTILES),
        skip_reasons=load.skip_reasons)
    return kept, report


def fewshot_exemplars(config) -> tuple[CoTRecord, ...]:
    """`data.fewshot` exemplars from the train split for evaluation prompts (seeded)."""
    if config.data.fewshot <= 0:
        return ()
    train, _ = records_lib.load_records(config.data, "train")
    return select_fewshot(train, config.data.fewshot, config.data.fewshot_seed)


# ---------------------------------------------------------------------------------------------
# Packing and batching.

def to_features(ex: Example) -> dict[str, np.ndarray]:
    """Next-token targets and their weights, aligned with the input positions that predict them
    (reward examples: their labels and weights where they stand)."""
    last = np.zeros(1, np.int32)
    if ex.labels is not None:
        return {"inputs": ex.tokens, "targets": np.concatenate([ex.tokens[1:], last]),
                "weights": ex.weights, "kinds": np.zeros(len(ex.tokens), np.int32),
                "labels": ex.labels}
    # Hand-made examples without kinds count every weighted token as an answer token.
    kinds = ex.kinds if ex.kinds is not None else np.where(ex.weights > 0, KIND_ANSWER, 0)
    return {
        "inputs": ex.tokens,
        "targets": np.concatenate([ex.tokens[1:], last]),
        "weights": np.concatenate([ex.weights[1:], np.zeros(1, np.float32)]),
        "kinds": np.concatenate([kinds[1:], last]).astype(np.int32),
    }


def _rename(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # grain emits segment ids and positions per packed feature; all packed features share one
    # layout, so the inputs' are the example's.
    out = {k: packed[k] for k in (*_PACKED_KEYS, *REWARD_KEYS) if k in packed}
    return {**out, "segment_ids": packed["inputs_segment_ids"],
            "positions": packed["inputs_positions"]}


def _batch_fn(batch_size: int, seq_len: int, keys: Sequence[str] = BATCH_KEYS):
    def stack(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        # A short final batch is filled with padding rows (segment 0, weight 0): static shapes.
        out = {}
        for key in keys:
            arr = np.stack([r[key] for r in rows])
            pad = np.zeros((batch_size - len(rows), seq_len), arr.dtype)
            out[key] = np.concatenate([arr, pad]) if len(pad) else arr
        return out
    return stack


def packed_dataset(examples: Sequence[Example], spec: PackSpec, process_index: int = 0,
                   process_count: int = 1) -> grain.IterDataset:
    """This process's shard of `examples`, shuffled, repeated, packed and batched."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    too_long = [e.id for e in examples if len(e) > spec.seq_len]
    if too_long:
        raise ValueError(f"{len(too_long)} examples exceed seq_len={spec.seq_len} "
                         f"(first: {too_long[0]!r}); fit them with fit_length first")
    ds = grain.MapDataset.source(list(examples))[process_index::process_count]
    if len(ds) == 0:
        raise ValueError(f"process {process_index} of {process_count} has no examples")
    if spec.shuffle:
        ds = ds.shuffle(seed=spec.seed)  # a new permutation every epoch (seed + epoch)
    ds = ds.repeat(None if spec.num_epochs == -1 else spec.num_epochs)
    # In-memory examples: prefetch threads would buy nothing and cost 16 threads per process.
    it = ds.map(to_features).to_iter_dataset(grain.ReadOptions(num_threads=0))
    reward = {e.labels is not None for e in examples}
    if len(reward) > 1:
        raise ValueError("reward examples (with labels) and CoT examples cannot be mixed")
    packed_keys = _PACKED_KEYS + (REWARD_KEYS if True in reward else ())
    packed = PACKERS[spec.packer](
        it, length_struct={k: spec.seq_len for k in packed_keys},
        num_packing_bins=spec.packing_bins, seed=spec.seed, shuffle_bins=spec.shuffle)
    keys = BATCH_KEYS + (REWARD_KEYS if True in reward else ())
    return packed.map(_rename).batch(spec.batch_size, batch_fn=_batch_fn(
        spec.batch_size, spec.seq_len, keys))


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    return (jax.process_index() if process_index is None else process_index,
            jax.process_count() if process_count is None else process_count)


def pack_spec(config, process_count: int) -> PackSpec:
    """The per-process PackSpec of a config (global batch split over processes)."""
    data = config.data
    if data.batch_size % process_count:
        raise ValueError(f"data.batch_size={data.batch_size} is not divisible by "
                         f"process_count={process_count}")
    return PackSpec(seq_len=data.seq_len, batch_size=data.batch_size // process_count,
                    seed=config.seed, shuffle=data.shuffle, num_epochs=data.num_epochs,
                    packer=data.packer, packing_bins=data.packing_bins)


def make_train_dataset(config, tokenizer, split: str = "train", process_index: int | None = None,
                       process_count: int | None = None) -> tuple[grain.IterDataset, DataReport]:
    """The batched dataset of a config for this process, and what loading it did."""
    process_index, process_count = _processes(process_index, process_count)
    spec = pack_spec(config, process_count)
    examples, report = load_examples(config, tokenizer, split)
    return packed_dataset(examples, spec, process_index, process_count), report


def make_train_iterator(config, tokenizer, split: str = "train",
                        process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
    """A grain iterator of batch dicts (checkpoint it with get_state/set_state)."""
    ds, report = make_train_dataset(config, tokenizer, split, process_index, process_count)
    logging.info("data %s: %s", split, report)
    return iter(ds)


# ---------------------------------------------------------------------------------------------
# Statistics: `cotjax data-stats`.

def packing_efficiency(batches: Iterable[dict[str, np.ndarray]]) -> tuple[float, int]:
    """(non-padding tokens / all tokens, rows) over the batches."""
    real = total = rows = 0
    for b in batches:
        real += int(np.count_nonzero(b["segment_ids"]))
        total += b["segment_ids"].size
        rows += len(b["segment_ids"])
    return real / max(total, 1), rows


def data_stats(config, tokenizer) -> dict:
    """One pass over one epoch of the training split, as process 0 of 1."""
    examples, report = load_examples(config, tokenizer, "train")
    spec = dataclasses.replace(pack_spec(config, 1), num_epochs=1)
    efficiency, rows = packing_efficiency(packed_dataset(examples, spec))
    return {**dataclasses.asdict(report), "rows": rows, "seq_len": spec.seq_len,
            "packing_efficiency": round(efficiency, 4)}


def print_stats(config, stats: dict) -> None:
    data = config.data
    print(f"source {data.source} ({data.get('path', '')}), template {data.template}, "
          f"mode {data.mode}, model {config.model}")
    print(f"records read {stats['read']}, skipped {stats['skipped']}, "
          f"held out for validation {data.validation_size}")
    for reason in stats["skip_reasons"]:
        print(f"  skipped: {reason}")
    lengths = ", ".join(f"p{p} {n}" for p, n in stats["length_percentiles"])
    print(f"tokens per example: {lengths}")
    print(f"examples {stats['examples']}, truncated {stats['truncated']}, dropped (overlong) "
          f"{stats['dropped']} at seq_len {stats['seq_len']}")
    print(f"tokens {stats['tokens']}, with loss weight {stats['target_tokens']}")
    print(f"packed rows {stats['rows']}, packing efficiency {stats['packing_efficiency']:.2%}")
