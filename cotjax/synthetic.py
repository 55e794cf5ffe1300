"""A synthetic multi-step arithmetic task: no download, verifiable chains, difficulty by steps.

"Start with 7. Add 5. Multiply by 3. Subtract 4. What is the result?" has the chain
"7 + 5 = 12\\n12 * 3 = 36\\n36 - 4 = 32" and the answer "32". Every intermediate value is an
integer in [1, MAX_VALUE] (division only when exact, subtraction never below 1), so a small
model can learn the task and `steps.check_steps` can verify every line of the chain.

A leaf: it yields raw rows (dicts with `id`, `question`, `chain`, `answer`), which
`cotjax.records` turns into CoT records like any other source.
"""

from __future__ import annotations

import json
import pathlib
import random
from collections.abc import Callable, Iterable


MAX_VALUE = 999
_START_RANGE = (2, 20)
_SMALL_OPERAND = (1, 20)  # added or subtracted
_FACTOR = (2, 5)  # multiplier or divisor

# Phrasings per operation; several, so the model reads the words instead of one fixed template.
_PHRASES = {
    "+": ("Add {n}.", "Increase it by {n}.", "Then add {n}."),
    "-": ("Subtract {n}.", "Take away {n}.", "Decrease it by {n}."),
    "*": ("Multiply by {n}.", "Multiply it by {n}.", "Make it {n} times as large."),
    "/": ("Divide by {n}.", "Divide it by {n}.", "Split it into {n} equal parts and keep one."),
}


def _operand_choices(value: int) -> dict[str, list[int]]:
    """Operands per operation that keep the next value an integer in [1, MAX_VALUE]."""
    small = range(_SMALL_OPERAND[0], _SMALL_OPERAND[1] + 1)
    factors = range(_FACTOR[0], _FACTOR[1] + 1)
    choices = {
        "+": [n for n in small if value + n <= MAX_VALUE],
        "-": [n for n in small if value - n >= 1],
        "*": [n for n in factors if value * n <= MAX_VALUE],
        "/": [n for n in factors if value % n == 0],
    }
    return {op: operands for op, operands in choices.items() if operands}


_APPLY: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a // b,  # only exact divisions are drawn
}


def _make_row(rng: random.Random, index: int, steps: int) -> dict[str, str]:
    value = rng.randint(*_START_RANGE)
    sentences = [f"Start with {value}."]
    lines = []
    for _ in range(steps):
        choices = _operand_choices(value)
        op = rng.choice(sorted(choices))
        n = rng.choice(choices[op])
        result = _APPLY[op](value, n)
        sentences.append(rng.choice(_PHRASES[op]).format(n=n))
        lines.append(f"{value} {op} {n} = {result}")
        value = result
    question = " ".join(sentences) + " What is the result?"
    chain = "\n".join(lines)
    return {"id": f"synth-s{steps}-{index:06d}", "question": question, "chain": chain,
            "answer": str(value)}


def generate_rows(n: int, min_steps: int, max_steps: int, seed: int) -> list[dict[str, str]]:
    """`n` problems with between `min_steps` and `max_steps` operations each; the same seed
    always gives the same records. Ids read "synth-s{steps}-{index:06d}"."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps} and {max_steps}")
    rng = random.Random(seed)
    return [_make_row(rng, i, rng.randint(min_steps, max_steps)) for i in range(n)]


def num_steps(row: dict[str, str]) -> int:
    """Operations in a synthetic problem: one chain line each."""
    return len(row["chain"].splitlines())


def write_jsonl(path: str | pathlib.Path, rows: Iterable[dict[str, str]]) -> None:
    """Writes GSM8K's raw format (`question`, `answer` = chain + "\\n#### N"), so the GSM8K
    loaders and evaluators read synthetic data unchanged."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            answer = f"{row['chain']}\n#### {row['answer']}"
            f.write(json.dumps({"question": row["question"], "answer": answer}) + "\n")


# ----------------------------------------------------------------------------------------------
# Experiment 1 (CoT vs answer-only on held-out, longer problems): the held-out file.


def steps_in_question(question: str) -> int:
    """Operations in a synthetic question: one sentence each between "Start with N." and
    "What is the result?" (operands are integers, so every '.' ends a sentence)."""
    if not question.startswith("Start with ") or not question.endswith("What is the result?"):
        raise ValueError(f"not a synthetic question: {question[:80]!r}")
    return question.count(".") - 1


def main(args) -> None:
    """`cotjax synthetic OUT N MIN_STEPS MAX_STEPS SEED`: write N problems in GSM8K's raw format."""
    if len(args) != 5:
        raise SystemExit("usage: cotjax synthetic OUT N MIN_STEPS MAX_STEPS SEED")
    out, n, lo, hi, seed = args[0], *map(int, args[1:])
    write_jsonl(out, generate_rows(n, lo, hi, seed))
    print(f"wrote {n} problems with {lo}-{hi} operations to {out}")
