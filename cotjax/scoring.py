"""Scoring generations: answer extraction, voting, per-row scores and summaries.

Pure Python, no JAX: `cotjax eval` feeds it generations, tests feed it hand-written text. The
arithmetic of the written steps is judged by `cotjax.steps`.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Sequence
from fractions import Fraction

from cotjax.steps import (SIGNED_NUM, normalise_number, normalise_text, to_fraction,
                          check_steps)

TASKS = ("gsm8k", "aqua")

# ---------------------------------------------------------------------------------------------
# Answer extraction


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; supported tasks: {', '.join(TASKS)}")


_GSM8K_PHRASE = re.compile(r"(?i:the\s{1,3}answer\s{1,3}is)[\s:*$]{0,6}" + SIGNED_NUM)
_GSM8K_HASHES = re.compile(r"####[\s$]{0,6}" + SIGNED_NUM)
_ANY_NUMBER = re.compile(SIGNED_NUM)
# Bounded repeats: adjacent unbounded `\s*` would backtrack quadratically on long whitespace.
_AQUA_PHRASE = re.compile(
    r"(?i:answer)(?:\s{0,3}(?i:is))?[\s:]{0,6}(?:(?i:option)\s{0,3})?"
    r"(?:\(([A-Ea-e])\)|\(?([A-E])(?![A-Za-z0-9]))"
)
_AQUA_LETTER = re.compile(r"(?<![A-Za-z0-9])(?:\(([a-e])\)|([A-E])(?![A-Za-z0-9]))")


def extract_answer(text: str, task: str, flexible: bool = False) -> str | None:
    """The final answer in `text`, normalised; None when there is none.

    gsm8k: the number after "The answer is" (case-insensitive), else after "####"; with
    `flexible`, else the last number in the text. aqua: the letter A-E after an answer phrase
    ("The answer is C", "Answer: (C)", "ANSWER:C"); with `flexible`, else the last standalone
    letter. The first answer phrase wins: what follows it is usually a run-on generation.
    """
    check_task(task)
    text = normalise_text(text)
    if task == "gsm8k":
        return _extract_gsm8k(text, flexible)
    return _extract_aqua(text, flexible)


def extract_answer_flexible(text: str, task: str) -> str | None:
    return extract_answer(text, task, flexible=True)


def _extract_gsm8k(text: str, flexible: bool) -> str | None:
    match = _GSM8K_PHRASE.search(text) or _GSM8K_HASHES.search(text)
    if match is None and flexible:
        last = collections.deque(_ANY_NUMBER.finditer(text), maxlen=1)
        match = last[0] if last else None
    return normalise_number(match.group(1), match.group(2)) if match else None


def _extract_aqua(text: str, flexible: bool) -> str | None:
    match = _AQUA_PHRASE.search(text)
    if match:
        return (match.group(1) or match.group(2)).upper()
    if not flexible:
        return None
    last = None
    for match in _AQUA_LETTER.finditer(text):
        # "A train leaves..." is an article, not option A.
        if match.group(2) == "A" and re.match(r"\s[a-z]", text[match.end() : match.end() + 2]):
            continue
        last = (match.group(1) or match.group(2)).upper()
    return last


def _answer_key(answer: str, task: str) -> Fraction | str:
    """What equal answers share: a number for gsm8k (18.00 == 18), a letter for aqua."""
    if task == "gsm8k":
        value = to_fraction(answer)
        return value if value is not None else answer.strip()
    return answer.strip().upper()


def answers_equal(a: str | None, b: str | None, task: str) -> bool:
    check_task(task)
    if a is None or b is None:
        return False
    return _answer_key(a, task) == _answer_key(b, task)


def majority_vote(answers: Sequence[str | None], task: str) -> str | None:
    """The most common answer (self-consistency); None answers are ignored, equal numbers are
    one vote group, ties go to the answer seen first. Returns the group's first spelling."""
    check_task(task)
    groups: dict[Fraction | str, list] = {}
    for answer in answers:
        if answer is not None:
            groups.setdefault(_answer_key(answer, task), [answer, 0])[1] += 1
    if not groups:
        return None
    return max(groups.values(), key=lambda group: group[1])[0]  # max keeps the first on ties


# ---------------------------------------------------------------------------------------------
# Scoring and reports


def normalise_gold(gold: str, task: str) -> str:
    gold = normalise_text(gold).strip()
    if task == "aqua":
        return gold.upper()
    match = re.fullmatch(SIGNED_NUM, gold)
    return normalise_number(match.group(1), match.group(2)) if match else gold


def score_prediction(generation: str, gold_answer: str, task: str) -> dict:
    """Scores one generation: strict and flexible answers, and its step report.

    `answer_differs_from_last_step` flags a gsm8k answer that is not the value the chain's last
    claim states (an answer that does not follow from the written work); always False for aqua,
    whose letters cannot be compared with the chain's numbers.
    """
    check_task(task)
    gold = normalise_gold(gold_answer, task)
    strict = extract_answer(generation, task)
    flexible = extract_answer(generation, task, flexible=True)
    report = check_steps(generation)
    differs = (
        task == "gsm8k"
        and flexible is not None
        and report.last_value is not None
        and not answers_equal(flexible, report.last_value, task)
    )
    return {
        "gold": gold,
        "extracted": strict,
        "extracted_flexible": flexible,
        "correct": answers_equal(strict, gold, task),
        "correct_flexible": answers_equal(flexible, gold, task),
        "steps_total": report.total,
        "steps_valid": report.valid,
        "all_steps_valid": report.all_valid,
        "answer_differs_from_last_step": differs,
        "last_step_value": report.last_value,
        "steps": [dataclasses.asdict(step) for step in report.steps],
    }


def share(count: int, total: int) -> float:
    return count / total if total else 0.0


def summarize(rows: Sequence[dict], task: str) -> dict:
    """Aggregates `score_prediction` rows (plus `maj_answer` when self-consistency ran).

    `chains_all_steps_valid` is the share of all n chains that make at least one claim and whose
    claims all hold; `correct_with_invalid_step` and `answer_differs_from_last_step` are counts.
    """
    check_task(task)
    n = len(rows)

    def count(key: str) -> int:
        return sum(1 for row in rows if row.get(key))

    steps_total = sum(row["steps_total"] for row in rows)
    steps_valid = sum(row["steps_valid"] for row in rows)
    summary = {
        "task": task,
        "n": n,
        "accuracy": share(count("correct"), n),
        "accuracy_flexible": share(count("correct_flexible"), n),
        "correct": count("correct"),
        "correct_flexible": count("correct_flexible"),
        "steps_total": steps_total,
        "steps_valid": steps_valid,
        "step_validity": share(steps_valid, steps_total),
        "chains_with_steps": sum(1 for row in rows if row["steps_total"] > 0),
        "chains_all_steps_valid": share(count("all_steps_valid"), n),
        "chains_all_steps_valid_count": count("all_steps_valid"),
        "correct_with_invalid_step": sum(
            1 for row in rows if row.get("correct") and row["steps_valid"] < row["steps_total"]
        ),
        "answer_differs_from_last_step": count("answer_differs_from_last_step"),
    }
    if any("maj_answer" in row for row in rows):
        maj_correct = sum(
            answers_equal(row.get("maj_answer"), row.get("gold"), task) for row in rows
        )
        summary["maj_correct"] = maj_correct
        summary["maj_accuracy"] = share(maj_correct, n)
    return summary


