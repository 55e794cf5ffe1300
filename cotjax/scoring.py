"""Scoring generations: answer extraction, voting, per-row scores and summaries.

Pure Python, no JAX: `cotjax eval` feeds it generations, tests feed it hand-written text. The
arithmetic of the written steps is judged by `cotjax.steps`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from cotjax.steps import check_steps

# Answer extraction lives in cotjax.answers (records read answers too); re-exported here, where
# callers have always found it.
from cotjax.answers import (TASKS, answers_equal, chain_before_answer, check_task,  # noqa: F401
                            extract_answer, extract_answer_flexible, majority_vote,
                            normalise_gold)

# ---------------------------------------------------------------------------------------------
# Scoring and reports


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
