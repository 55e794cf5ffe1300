"""A synthetic multi-step arithmetic task: no download, verifiable chains, difficulty by steps.

"Start with 7. Add 5. Multiply by 3. Subtract 4. What is the result?" has the chain
"7 + 5 = 12\\n12 * 3 = 36\\n36 - 4 = 32" and the answer "32". Every intermediate value is an
integer in [1, MAX_VALUE] (division only when exact, subtraction never below 1), so a small
model can learn the task and `evaluate.check_steps` can verify every line of the chain.
"""

from __future__ import annotations

import json
import pathlib
import random
from collections.abc import Callable, Iterable

from cotjax.records import CoTRecord, read_json_lines

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


def _make_record(rng: random.Random, index: int, steps: int) -> CoTRecord:
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
    return CoTRecord(
        question=question, chain=chain, answer=str(value), id=f"synth-s{steps}-{index:06d}",
        chain_raw=chain,
    )


def generate_records(n: int, min_steps: int, max_steps: int, seed: int) -> list[CoTRecord]:
    """`n` problems with between `min_steps` and `max_steps` operations each; the same seed
    always gives the same records. Ids read "synth-s{steps}-{index:06d}"."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps} and {max_steps}")
    rng = random.Random(seed)
    return [_make_record(rng, i, rng.randint(min_steps, max_steps)) for i in range(n)]


def num_steps(record: CoTRecord) -> int:
    """Operations in a synthetic problem: one chain line each."""
    return len(record.chain.splitlines())


def write_jsonl(path: str | pathlib.Path, records: Iterable[CoTRecord]) -> None:
    """Writes GSM8K's raw format (`question`, `answer` = chain + "\\n#### N"), so the GSM8K
    loaders and evaluators read synthetic data unchanged."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            answer = f"{record.chain}\n#### {record.answer}"
            f.write(json.dumps({"question": record.question, "answer": answer}) + "\n")


# ----------------------------------------------------------------------------------------------
# Experiment 1 (CoT vs answer-only on held-out, longer problems): data file and breakdown.


def steps_in_question(question: str) -> int:
    """Operations in a synthetic question: one sentence each between "Start with N." and
    "What is the result?" (operands are integers, so every '.' ends a sentence)."""
    if not question.startswith("Start with ") or not question.endswith("What is the result?"):
        raise ValueError(f"not a synthetic question: {question[:80]!r}")
    return question.count(".") - 1


def accuracy_by_steps(rows: Iterable[dict]) -> dict[int, dict]:
    """predictions.jsonl rows grouped by the number of operations in their question:
    {steps: {n, correct, accuracy, steps_valid_share}}, in step order."""
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(steps_in_question(row["question"]), []).append(row)
    out = {}
    for steps in sorted(groups):
        rs = groups[steps]
        correct = sum(bool(r["correct"]) for r in rs)
        claims = sum(r["steps_total"] for r in rs)
        out[steps] = {"n": len(rs), "correct": correct, "accuracy": correct / len(rs),
                      "steps_valid_share": (sum(r["steps_valid"] for r in rs) / claims
                                            if claims else None)}
    return out


def plot_by_steps(tables: dict[str, dict[int, dict]], path: str | pathlib.Path) -> None:
    """Accuracy against number of operations, one line per run, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, table in tables.items():
        steps = sorted(table)
        ax.plot(steps, [table[s]["accuracy"] for s in steps], marker="o", label=label)
    ax.set_xlabel("operations in the problem")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """python -m cotjax.synthetic write OUT N MIN_STEPS MAX_STEPS SEED
    python -m cotjax.synthetic report OUT_PREFIX LABEL=PREDICTIONS.jsonl ...
    (report: prints and writes OUT_PREFIX.json with accuracy by steps, and OUT_PREFIX.png)"""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["write"] and len(args) == 6:
        out, n, lo, hi, seed = args[1], *map(int, args[2:])
        write_jsonl(out, generate_records(n, lo, hi, seed))
        print(f"wrote {n} problems with {lo}-{hi} operations to {out}")
    elif args[:1] == ["report"] and len(args) >= 3:
        prefix = pathlib.Path(args[1])
        tables = {}
        for spec in args[2:]:
            label, _, path = spec.partition("=")
            tables[label] = accuracy_by_steps(row for _, row in read_json_lines(path))
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".json").write_text(json.dumps(tables, indent=1) + "\n")
        plot_by_steps(tables, prefix.with_suffix(".png"))
        steps = sorted({s for t in tables.values() for s in t})
        print("operations  " + "  ".join(f"{s:>5}" for s in steps))
        for label, t in tables.items():
            print(f"{label:<11} " + "  ".join(
                f"{t[s]['accuracy']:5.2f}" if s in t else "    -" for s in steps))
    else:
        raise SystemExit(main.__doc__)


if __name__ == "__main__":
    main()
