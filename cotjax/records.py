"""The CoT record type and dataset adapters (gsm8k, aqua, jsonl, hf, tfds)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CoTRecord:
    """One reasoning example: the problem, its chain of steps, and the final answer.

    `options` holds multiple-choice options as (letter, text) pairs (AQuA); `chain_raw` keeps the
    chain with GSM8K calculator annotations (`<<48/2=24>>`) for the step checker even when `chain`
    has them stripped.
    """

    question: str
    chain: str
    answer: str
    options: tuple[tuple[str, str], ...] = ()
    id: str = ""
    chain_raw: str = ""
