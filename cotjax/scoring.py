"""Scoring generations: answer extraction, voting, per-row scores and summaries.

Pure Python, no JAX: `cotjax eval` feeds it generations, tests feed it hand-written text. The
arithmetic of the written steps is judged by `cotjax.steps`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
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


# Strict answers: a final-answer statement, then the answer right after it. Statements: "The
# answer is", "The final answer is", "The correct answer is", "Final answer is", "Answer:" (also
# "Final Answer:", "**Answer:**") and "\boxed{...}"; below them all, "####". Between the
# statement and the answer only decoration may sit: spaces, ":", "*", "$", "\boxed{", "\(", "\[",
# "{". A number that merely ends a sentence ("So she has 5 apples.") is no statement; neither is
# "answer" inside a sentence ("Each correct answer is 2 points", "she answered 5").
#
# Which statement wins: the first (leftmost) answer statement in the text, whatever its spelling.
# A model that has stated its answer usually runs on (a new question, another attempt), so a later
# statement answers something else. A statement not followed by an answer ("Answer: Tom has ...")
# is skipped, so "Final Answer: The final answer is 18" gives 18. "####" (GSM8K's own marker) ranks
# below every answer statement, wherever it stands: it is also a Markdown heading ("#### 1" over a
# model's first step), so "#### 1 ... The answer is: 102" gives 102.
#
# Every repeat is bounded and the alternatives start on distinct characters: adjacent unbounded
# `\s*` would backtrack quadratically on long whitespace, and hostile text must stay linear.
_DECORATION = r"(?:[\s:*$]|\\boxed\{|\\\(|\\\[|\\\$|\{){0,6}"
_ANSWER_IS = (r"(?:(?:the|my|our)\s{1,3}(?:(?:final|correct)\s{1,3})?|final\s{1,3})"
              r"answer\s{1,3}is")
_ANSWER_COLON = r"(?:final\s{1,3})?answer[*\s]{0,4}:"
_GSM8K_STATEMENT = re.compile(
    rf"(?:(?<![A-Za-z])(?i:{_ANSWER_IS}|{_ANSWER_COLON})|\\boxed\{{)" + _DECORATION + SIGNED_NUM
)
_GSM8K_HASHES = re.compile(r"####" + _DECORATION + SIGNED_NUM)
_ANY_NUMBER = re.compile(SIGNED_NUM)
# Multiple choice: the answer statements above ("is" optional after "answer": "Answer C",
# "ANSWER:C", "The answer is option D"), "the correct option/choice is (C)" and "\boxed{C}", the
# first one winning; no "####". The letter is A-E, upper case or in parentheses ("(c)"), and stands
# alone ("A train" after a statement is still A: a model's "Answer: A) 54" is common, an article
# right after a statement is not).
_AQUA_PHRASE = (r"answer(?:\s{0,3}is)?"
                r"|(?:correct|right|best|final)\s{1,3}(?:option|choice)(?:\s{1,3}is)?")
_AQUA_STATEMENT = re.compile(
    rf"(?:(?<![A-Za-z])(?i:{_AQUA_PHRASE}){_DECORATION}(?:(?i:option|choice)\s{{0,3}})?"
    r"|\\boxed\{\s{0,3})"
    r"(?:\(([A-Ea-e])\)|\(?([A-E])(?![A-Za-z0-9]))"
)
_AQUA_LETTER = re.compile(r"(?<![A-Za-z0-9])(?:\(([a-e])\)|([A-E])(?![A-Za-z0-9]))")


def extract_answer(text: str, task: str, flexible: bool = False) -> str | None:
    """The final answer in `text`, normalised; None when there is none.

    Strict (the default): the answer right after the first final-answer statement (see
    `_GSM8K_STATEMENT` / `_AQUA_STATEMENT`): gsm8k a number after "The answer is", "The final
    answer is", "Answer:", in "\\boxed{}", else after "####"; aqua a letter A-E after "The
    answer is", "Answer: (C)", "ANSWER:C", "the correct option is". The first statement wins:
    what follows it is usually a run-on generation. With `flexible`, when there is no
    statement: gsm8k the last number in the text, aqua the last standalone letter.
    """
    check_task(task)
    text = normalise_text(text)
    if task == "gsm8k":
        return _extract_gsm8k(text, flexible)
    return _extract_aqua(text, flexible)


def chain_before_answer(text: str, task: str) -> str | None:
    """The reasoning of a generation without its final-answer statement and what follows it
    (a run-on), for training on a model's own chains; None when there is no strict statement.
    A statement's lead-in on its own line ("So the answer is 8") goes with it; a line that holds
    a step before the statement ("... = 8. The answer is 8") keeps the step."""
    check_task(task)
    text = normalise_text(text)
    match = (_GSM8K_STATEMENT.search(text) or _GSM8K_HASHES.search(text) if task == "gsm8k"
             else _AQUA_STATEMENT.search(text))
    if match is None:
        return None
    head = text[:match.start()]
    line_start = head.rfind("\n") + 1
    if not re.search(r"[0-9=]", head[line_start:]):
        head = head[:line_start]
    return head.strip()


def extract_answer_flexible(text: str, task: str) -> str | None:
    return extract_answer(text, task, flexible=True)


def _extract_gsm8k(text: str, flexible: bool) -> str | None:
    match = _GSM8K_STATEMENT.search(text) or _GSM8K_HASHES.search(text)
    if match is None and flexible:
        last = collections.deque(_ANY_NUMBER.finditer(text), maxlen=1)
        match = last[0] if last else None
    return normalise_number(match.group(1), match.group(2)) if match else None


def _extract_aqua(text: str, flexible: bool) -> str | None:
    match = _AQUA_STATEMENT.search(text)
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
        "steps_truncated": report.truncated,
        "steps_checked": report.applicable,  # False: longer than steps.MAX_TEXT_CHARS
        "all_steps_valid": report.all_valid,
        "answer_differs_from_last_step": differs,
        "last_step_value": report.last_value,
        "steps": [dataclasses.asdict(step) for step in report.steps],
    }


def score_samples(generations: Sequence[str], gold_answer: str, task: str) -> dict:
    """Self-consistency over sampled chains, every selector under both rules.

    Returns `samples`: one dict per generation, in order (`extracted`, `extracted_flexible`,
    `correct`, `correct_flexible`; the caller adds the generation itself), and the votes:
    `maj_answer` / `maj_correct`, the majority of the strict answers, and `maj_answer_flexible`
    / `maj_correct_flexible`, the majority of the flexible answers. A vote is thus scored by the
    same rule as the greedy answer it is compared with (`correct` / `correct_flexible`).
    """
    check_task(task)
    gold = normalise_gold(gold_answer, task)
    samples = []
    for generation in generations:
        strict = extract_answer(generation, task)
        flexible = extract_answer(generation, task, flexible=True)
        samples.append({"extracted": strict, "extracted_flexible": flexible,
                        "correct": answers_equal(strict, gold, task),
                        "correct_flexible": answers_equal(flexible, gold, task)})
    vote = majority_vote([s["extracted"] for s in samples], task)
    vote_flexible = majority_vote([s["extracted_flexible"] for s in samples], task)
    return {"samples": samples,
            "maj_answer": vote, "maj_correct": answers_equal(vote, gold, task),
            "maj_answer_flexible": vote_flexible,
            "maj_correct_flexible": answers_equal(vote_flexible, gold, task)}


def share(count: int, total: int) -> float:
    return count / total if total else 0.0


_Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: float, n: float, z: float = _Z95) -> list[float]:
    """The Wilson score interval [lo, hi] of a binomial share (95% by default), rounded to 6
    decimals; [0.0, 1.0] when n is 0. `successes` and `n` may be effective (non-integer)."""
    if n <= 0:
        return [0.0, 1.0]
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(max(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    return [round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)]


def clustered_wilson_interval(correct_per_question: Sequence[int],
                              samples_per_question: Sequence[int]) -> list[float]:
    """A 95% interval for the share of correct samples when each question has several samples.

    Samples of one question are not independent, so a Wilson interval over all of them would be
    too narrow. The interval is Wilson's at the effective sample size (Kish's design effect):
    n_eff = p(1 - p) / var(p), with var(p) estimated from the spread of the per-question shares,
    kept between the number of questions and the number of samples (the number of questions
    when every sample is right, or every one wrong, and there is no spread to measure).
    """
    total = sum(samples_per_question)
    questions = sum(1 for k in samples_per_question if k)
    if not total:
        return [0.0, 1.0]
    p = sum(correct_per_question) / total
    n_eff = float(total)
    if questions > 1:
        # The ratio estimator's variance: sum((c_i - p k_i)^2) / (q (q - 1) mean(k)^2).
        mean_k = total / questions
        resid = sum((c - p * k) ** 2 for c, k in zip(correct_per_question, samples_per_question))
        var_p = resid / (mean_k**2 * questions * (questions - 1))
        if var_p > 0:
            n_eff = p * (1 - p) / var_p
        elif p in (0.0, 1.0):  # no spread to measure: assume the worst, one sample per question
            n_eff = float(questions)
    n_eff = min(max(n_eff, float(questions)), float(total))
    return wilson_interval(p * n_eff, n_eff)


def summarize(rows: Sequence[dict], task: str) -> dict:
    """Aggregates `score_prediction` rows, plus `score_samples` fields when self-consistency ran.

    Every selector is reported under both rules, each accuracy with its 95% interval beside it
    (`<name>_ci95`: Wilson's over questions; for the share of correct samples, Wilson's at the
    effective sample size, see `clustered_wilson_interval`): `accuracy` / `accuracy_flexible`
    (the greedy answer), `maj_accuracy` / `maj_accuracy_flexible` (the vote of the strict /
    flexible answers), `sample_accuracy` / `sample_accuracy_flexible` (one sample). These fields,
    and only these, are what `summarize` computes: everything else in a summary.json (model,
    data, timings) is written by `cotjax eval` and kept by `cotjax report rescore`.

    `chains_all_steps_valid` is the share of all n chains that make at least one claim and whose
    claims all hold; `correct_with_invalid_step` and `answer_differs_from_last_step` are counts.
    """
    check_task(task)
    n = len(rows)

    def count(key: str) -> int:
        return sum(1 for row in rows if row.get(key))

    def accuracy(name: str, correct: int) -> dict:
        return {name: share(correct, n), f"{name}_ci95": wilson_interval(correct, n)}

    steps_total = sum(row["steps_total"] for row in rows)
    steps_valid = sum(row["steps_valid"] for row in rows)
    summary = {
        "task": task,
        "n": n,
        **accuracy("accuracy", count("correct")),
        **accuracy("accuracy_flexible", count("correct_flexible")),
        "correct": count("correct"),
        "correct_flexible": count("correct_flexible"),
        "steps_total": steps_total,
        "steps_valid": steps_valid,
        "step_validity": share(steps_valid, steps_total),
        "steps_truncated": sum(row.get("steps_truncated", 0) for row in rows),
        "chains_not_checked": sum(1 for row in rows if row.get("steps_checked") is False),
        "chains_with_steps": sum(1 for row in rows if row["steps_total"] > 0),
        "chains_all_steps_valid": share(count("all_steps_valid"), n),
        "chains_all_steps_valid_count": count("all_steps_valid"),
        "correct_with_invalid_step": sum(
            1 for row in rows if row.get("correct") and row["steps_valid"] < row["steps_total"]
        ),
        "answer_differs_from_last_step": count("answer_differs_from_last_step"),
    }
    for suffix in ("", "_flexible"):
        if any(f"maj_answer{suffix}" in row for row in rows):
            right = sum(answers_equal(row.get(f"maj_answer{suffix}"), row.get("gold"), task)
                        for row in rows)
            summary[f"maj_correct{suffix}"] = right
            summary.update(accuracy(f"maj_accuracy{suffix}", right))
    for suffix in ("", "_flexible"):
        key = f"correct{suffix}"
        if any(key in sample for row in rows for sample in row.get("samples", ())):
            right = [sum(bool(s.get(key)) for s in row.get("samples", ())) for row in rows]
            drawn = [len(row.get("samples", ())) for row in rows]
            summary[f"sample_correct{suffix}"] = sum(right)
            summary[f"sample_accuracy{suffix}"] = share(sum(right), sum(drawn))
            summary[f"sample_accuracy{suffix}_ci95"] = clustered_wilson_interval(right, drawn)
    return summary
