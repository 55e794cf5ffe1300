"""Answer extraction, step checking, scoring and reports (pure Python, no JAX)."""

from __future__ import annotations

import json
import pathlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotjax import report
from cotjax.report import format_table, write_report
from cotjax.scoring import (
    answers_equal,
    clustered_wilson_interval,
    extract_answer,
    extract_answer_flexible,
    majority_vote,
    score_prediction,
    score_samples,
    summarize,
    wilson_interval,
)

GSM8K_TRAIN = pathlib.Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "train.jsonl"


# ------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is $1,234.00.", "1234"),
        ("Natalia sold 72 clips.\n#### 72", "72"),
        ("The answer is 18 dollars", "18"),
        ("the ANSWER is 18.", "18"),
        ("So the answer is: 42", "42"),
        ("The answer is **42**.", "42"),
        ("The answer is -3.", "-3"),
        ("The answer is 0.5", "0.5"),
        ("The answer is .5", "0.5"),
        ("The answer is 18.00", "18"),
        ("The answer is 2.50", "2.5"),
        ("The answer is 1,000", "1000"),
        ("The answer is 007", "7"),
        ("#### -0.0", "0"),
        ("#### $1,000,000", "1000000"),
        ("####5", "5"),
        ("The answer is 5. Question: ... The answer is 6.", "5"),  # run-on continuation
        ("The answer is 9 but #### 10", "9"),  # the phrase outranks ####
        ("The answer is ٣٤", "34"),  # Arabic-Indic digits are digits
        ("The answer is 3\u221212", "3"),  # unicode minus joins two numbers: not a sign
        # other common final-answer statements
        ("Answer: 42", "42"),
        ("ANSWER:42", "42"),
        ("So 6 * 7 = 42.\nFinal Answer: 42", "42"),
        ("**Answer:** 42", "42"),
        ("**Answer**: 42", "42"),
        ("The final answer is $1,200.", "1200"),
        ("Final answer is 7", "7"),
        ("The correct answer is 12 apples.", "12"),
        ("My answer is 9", "9"),
        ("\\boxed{18}", "18"),
        ("The answer is $\\boxed{18}$.", "18"),
        ("\\[ \\boxed{\\$1,000} \\]", "1000"),
        ("The answer is \\(18\\)", "18"),
        ("#### 72", "72"),
        ("the answer is: **18**", "18"),
        # which statement wins: the first answer statement; "####" only when there is none
        ("Final Answer: The final answer is 18", "18"),  # a statement without a number: skipped
        ("Answer: Tom has 5 apples. The answer is 7.", "7"),
        ("The final answer is 3.\n\nQuestion: ... Answer: 4", "3"),  # run-on continuation
        ("\\boxed{5} The answer is 6", "5"),
        ("#### 1\nThe answer is: 102", "102"),  # a Markdown heading over a step is not the answer
        ("#### 10 and then The answer is 9", "9"),
    ],
)
def test_gsm8k_strict(text, expected):
    assert extract_answer(text, "gsm8k") == expected


@pytest.mark.parametrize(
    "text",
    [
        "", "no numbers here", "She has 5 apples and 7 pears.", "The answer is unclear.", "###",
        "So she has 5 apples.",  # a number ending a sentence is no answer statement
        "The total is 18.",
        "Each correct answer is 2 points, so 10 answers give 20.",  # "answer" inside a sentence
        "She answered: 5 of them",
        "Answers: 5",
        "To answer 3 questions takes 9 minutes.",
        "Answer: Tom has 5 apples",  # the statement is not followed by a number
        "The final answer is unclear, perhaps 7",
        "boxed{18}",  # not the LaTeX command
        "\\boxed{\\frac{1}{2}}",  # not a plain number: no strict answer rather than a wrong one
        "# 72",
    ],
)
def test_gsm8k_strict_none(text):
    assert extract_answer(text, "gsm8k") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She has 5 apples and then 7 pears.", "7"),
        ("Total: $1,250.50 in all", "1250.5"),
        ("It drops to -4 degrees", "-4"),
        ("pages 10-12", "12"),  # a hyphen between numbers is not a minus sign
        ("The answer is 3, not 4", "3"),  # strict wins when it finds something
        ("nothing", None),
    ],
)
def test_gsm8k_flexible(text, expected):
    assert extract_answer(text, "gsm8k", flexible=True) == expected
    assert extract_answer_flexible(text, "gsm8k") == expected


@pytest.mark.parametrize(
    "text, strict, flexible",
    [
        ("The answer is C", "C", "C"),
        ("Answer: C", "C", "C"),
        ("so the answer is (C).", "C", "C"),
        ("ANSWER:C", "C", "C"),
        ("The correct answer is option D", "D", "D"),
        ("Answer: (b)", "B", "B"),
        ("27 / 3 = 9 groups.\nAnswer: E) 54", "E", "E"),
        ("I think it is B.", None, "B"),
        ("the correct option is (C)", "C", "C"),
        ("The correct choice is D.", "D", "D"),
        ("The best option is B", "B", "B"),
        ("The final answer is (e)", "E", "E"),
        ("**Answer:** (d)", "D", "D"),
        ("\\boxed{B}", "B", "B"),
        ("The answer is $\\boxed{E}$", "E", "E"),
        ("Answer: B. Question: ... Answer: D", "B", "B"),  # the first statement wins
        ("Option A is 5 and option B is 6, so E", None, "E"),  # listing options: no statement
        ("Answer: see above, it is (b)", None, "B"),
        ("A train leaves at 5. Pick (c)", None, "C"),
        ("A train leaves the station.", None, None),  # the article is not option A
        ("The answer is a mystery", None, None),
        ("Answers vary. Each one differs", None, None),
        ("", None, None),
    ],
)
def test_aqua(text, strict, flexible):
    assert extract_answer(text, "aqua") == strict
    assert extract_answer(text, "aqua", flexible=True) == flexible


@pytest.mark.parametrize(
    "text",
    [
        "Answer" + "*" * 100_000,
        "answer:" * 30_000,
        "The final answer is" + " " * 100_000 + "x",
        "the final " * 20_000,
        "\\boxed{" * 30_000,
        "Final Answer: " + "$" * 100_000,
        "the correct option is" + " " * 100_000,
        "answer is " * 20_000 + "a",
        "#### " * 25_000,
    ],
)
def test_answer_statements_stay_fast_on_long_hostile_text(text):
    start = time.perf_counter()
    for task in ("gsm8k", "aqua"):
        extract_answer(text, task)
        extract_answer(text, task, flexible=True)
    assert time.perf_counter() - start < 2.0


def test_aqua_format_sample_rationales():
    sample = GSM8K_TRAIN.parents[1] / "aqua" / "format_sample.jsonl"
    rows = [json.loads(line) for line in sample.read_text().splitlines()]
    assert rows
    for row in rows:
        assert extract_answer(row["rationale"], "aqua") == row["correct"]


def test_unknown_task_names_supported_ones():
    with pytest.raises(ValueError, match=r"'mathqa'.*gsm8k.*aqua"):
        extract_answer("The answer is 3", "mathqa")
    with pytest.raises(ValueError, match="mathqa"):
        score_prediction("x", "3", "mathqa")


@pytest.mark.parametrize(
    "a, b, task, equal",
    [
        ("18.00", "18", "gsm8k", True),
        ("1,000", "1000", "gsm8k", True),
        ("$5", "5.0", "gsm8k", True),
        ("0.5", "1/2", "gsm8k", True),
        ("-3", "3", "gsm8k", False),
        ("18", "18.01", "gsm8k", False),
        ("abc", "abc", "gsm8k", True),
        (None, "18", "gsm8k", False),
        ("c", "C", "aqua", True),
        ("C", "D", "aqua", False),
    ],
)
def test_answers_equal(a, b, task, equal):
    assert answers_equal(a, b, task) is equal


# -------------------------------------------------------------------------------- scoring


def test_score_prediction_gsm8k():
    generation = "He has 3 * 4 = 12 apples. Then 12 + 5 = 17.\nThe answer is 17."
    row = score_prediction(generation, "17", "gsm8k")
    assert row["extracted"] == row["extracted_flexible"] == "17"
    assert row["correct"] and row["correct_flexible"]
    assert (row["steps_total"], row["steps_valid"], row["all_steps_valid"]) == (2, 2, True)
    assert row["answer_differs_from_last_step"] is False
    json.dumps(row)


def test_score_prediction_flags_invalid_steps_and_unfaithful_answers():
    row = score_prediction("3 * 4 = 13, and 13 + 5 = 18 so the total is 19", "19", "gsm8k")
    assert row["extracted"] is None and row["extracted_flexible"] == "19"
    assert not row["correct"] and row["correct_flexible"]
    assert (row["steps_total"], row["steps_valid"], row["all_steps_valid"]) == (2, 1, False)
    assert row["answer_differs_from_last_step"] is True


def test_score_prediction_normalises_gold():
    assert score_prediction("#### 1000", "1,000", "gsm8k")["correct"]
    assert score_prediction("Answer: c", "c", "aqua")["correct"] is False  # bare lowercase
    assert score_prediction("Answer: (c)", "C", "aqua")["correct"]


def test_majority_vote():
    assert majority_vote(["18", "18.0", "17", None, "17"], "gsm8k") == "18"  # tie: first seen
    assert majority_vote(["17", "18", "18.00", "17", "18"], "gsm8k") == "18"
    assert majority_vote([None, None], "gsm8k") is None
    assert majority_vote([], "aqua") is None
    assert majority_vote(["b", "C", "B"], "aqua") == "b"


def test_summarize_format_and_write(tmp_path):
    generations = [
        ("3 * 4 = 12. The answer is 12.", "12"),
        ("3 * 4 = 13. The answer is 13.", "13"),  # correct answer, invalid step
        ("I guess 7", "8"),
        ("The answer is 5 + 1 = 6", "6"),
    ]
    rows = []
    for generation, gold in generations:
        row = score_prediction(generation, gold, "gsm8k")
        row["maj_answer"] = gold if gold != "8" else "9"
        rows.append(row)
    summary = summarize(rows, "gsm8k")
    assert summary["task"] == "gsm8k" and summary["n"] == 4
    assert summary["accuracy"] == 0.5 and summary["accuracy_flexible"] == 0.5
    assert (summary["correct"], summary["correct_flexible"]) == (2, 2)
    assert (summary["steps_total"], summary["steps_valid"]) == (3, 2)
    assert summary["chains_all_steps_valid"] == 0.5
    assert summary["chains_all_steps_valid_count"] == 2
    assert summary["chains_with_steps"] == 3
    assert summary["correct_with_invalid_step"] == 1
    assert summary["answer_differs_from_last_step"] == 1  # "answer is 5 + 1 = 6" extracts 5
    assert summary["maj_accuracy"] == 0.75
    table = format_table(summary)
    assert "maj_accuracy" in table and "0.7500" in table
    predictions, summary_path = write_report(tmp_path / "eval", rows, summary)
    lines = predictions.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[1])["steps_valid"] == 0
    assert json.loads(summary_path.read_text()) == summary


def test_summarize_empty():
    summary = summarize([], "aqua")
    assert summary["n"] == 0 and summary["accuracy"] == 0.0 and "maj_accuracy" not in summary


def test_score_samples_scores_every_selector_under_both_rules():
    generations = [
        "2 + 3 = 5. The answer is 5.",
        "I get 5",  # flexible only
        "Maybe 7",  # flexible only
        "Surely 7",  # flexible only
        "#### 6",
    ]
    got = score_samples(generations, "5", "gsm8k")
    assert [s["extracted"] for s in got["samples"]] == ["5", None, None, None, "6"]
    assert [s["extracted_flexible"] for s in got["samples"]] == ["5", "5", "7", "7", "6"]
    assert [s["correct"] for s in got["samples"]] == [True, False, False, False, False]
    assert [s["correct_flexible"] for s in got["samples"]] == [True, True, False, False, False]
    # the strict vote counts strict answers only; the flexible vote, flexible ones (tie: first)
    assert (got["maj_answer"], got["maj_correct"]) == ("5", True)
    assert (got["maj_answer_flexible"], got["maj_correct_flexible"]) == ("5", True)
    got = score_samples(["Maybe 7", "Surely 7", "The answer is 5"], "5", "gsm8k")
    assert (got["maj_answer"], got["maj_correct"]) == ("5", True)
    assert (got["maj_answer_flexible"], got["maj_correct_flexible"]) == ("7", False)
    assert score_samples([], "5", "gsm8k")["maj_answer"] is None
    assert score_samples(["Answer: (c)"], "c", "aqua")["maj_correct"] is True


def test_summarize_reports_votes_and_samples_under_both_rules_with_intervals():
    rows = []
    for generation, gold, samples in [
        ("The answer is 5", "5", ["The answer is 5", "maybe 5", "maybe 5"]),
        ("about 6", "6", ["maybe 6", "maybe 6", "The answer is 7"]),
        ("The answer is 1", "2", ["The answer is 3", "The answer is 3", "maybe 2"]),
        ("nothing", "4", ["nothing", "nothing", "nothing"]),
    ]:
        row = score_prediction(generation, gold, "gsm8k")
        votes = score_samples(samples, gold, "gsm8k")
        row["samples"] = [{"generation": g, **s} for g, s in zip(samples, votes.pop("samples"))]
        rows.append({**row, **votes})
    summary = summarize(rows, "gsm8k")
    assert (summary["correct"], summary["correct_flexible"]) == (1, 2)
    assert (summary["maj_correct"], summary["maj_correct_flexible"]) == (1, 2)
    assert summary["maj_accuracy"] == 0.25 and summary["maj_accuracy_flexible"] == 0.5
    assert (summary["sample_correct"], summary["sample_correct_flexible"]) == (1, 6)
    assert summary["sample_accuracy"] == 1 / 12 and summary["sample_accuracy_flexible"] == 6 / 12
    for name in ("accuracy", "accuracy_flexible", "maj_accuracy", "maj_accuracy_flexible"):
        right = summary[name.replace("accuracy", "correct")]
        assert summary[f"{name}_ci95"] == wilson_interval(right, 4)
    for name in ("sample_accuracy", "sample_accuracy_flexible"):
        lo, hi = summary[f"{name}_ci95"]
        assert 0.0 <= lo <= summary[name] <= hi <= 1.0
    assert list(summary).index("accuracy_ci95") == list(summary).index("accuracy") + 1
    json.dumps(summary)


def test_summarize_without_flexible_votes_reports_the_strict_vote_only():
    row = {**score_prediction("The answer is 5", "5", "gsm8k"), "maj_answer": "5"}
    summary = summarize([row], "gsm8k")
    assert summary["maj_accuracy"] == 1.0 and "maj_accuracy_flexible" not in summary
    assert "sample_accuracy" not in summary


@pytest.mark.parametrize("k, n", [(13, 500), (27, 500), (0, 10), (10, 10), (1, 3), (5, 7), (0, 1),
                                  (250, 500), (1, 1000)])
def test_wilson_interval_matches_scipy(k, n):
    from scipy import stats  # a dependency of jax

    want = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(want.low, abs=1e-6) and hi == pytest.approx(want.high, abs=1e-6)


def test_wilson_interval_known_values():
    # by hand: p = 0.026, z^2 = 3.8415; centre 0.029614, half-width 0.014358
    assert wilson_interval(13, 500) == [0.015256, 0.043971]
    assert wilson_interval(0, 10) == [0.0, round(1.959964**2 / (10 + 1.959964**2), 6)]
    assert wilson_interval(0, 0) == [0.0, 1.0]


def test_clustered_interval_lies_between_questions_and_samples():
    # one sample per question: plain Wilson over questions
    assert clustered_wilson_interval([1, 0, 1, 0, 0], [1] * 5) == wilson_interval(2, 5)
    # all-or-nothing questions (samples perfectly correlated): as wide as one per question
    right, drawn = [8] * 10 + [0] * 30, [8] * 40
    assert clustered_wilson_interval(right, drawn) == wilson_interval(10, 40)
    # samples spread evenly across questions carry more information than one per question
    right = [2, 1, 3, 2, 2, 1, 3, 2, 2, 2] * 4
    lo, hi = clustered_wilson_interval(right, [8] * 40)
    q_lo, q_hi = wilson_interval(40 * 2 / 8, 40)
    s_lo, s_hi = wilson_interval(sum(right), 320)
    assert q_lo <= lo <= s_lo and s_hi <= hi <= q_hi
    # nothing right anywhere: no spread to measure, so the interval of one sample per question
    assert clustered_wilson_interval([0] * 40, [8] * 40) == wilson_interval(0, 40)
    assert clustered_wilson_interval([], []) == [0.0, 1.0]


def test_format_table_shows_intervals():
    table = format_table({"accuracy": 0.026, "accuracy_ci95": [0.015256, 0.043971], "n": 500})
    assert "[0.0153, 0.0440]" in table and "0.0260" in table


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=80))
def test_paired_comparison_counts_and_mcnemar_p(pairs):
    from scipy import stats  # a dependency of jax
    a = {f"q{i}": x for i, (x, _) in enumerate(pairs)}
    b = {f"q{i}": y for i, (_, y) in enumerate(pairs)}
    got = report.paired_comparison(a, b)
    assert got["both"] + got["only_a"] + got["only_b"] + got["neither"] == got["n"] == len(pairs)
    assert got["correct_a"] == sum(a.values()) and got["correct_b"] == sum(b.values())
    n = got["only_a"] + got["only_b"]
    want = stats.binomtest(got["only_a"], n, 0.5).pvalue if n else 1.0
    assert got["mcnemar_p"] == pytest.approx(want, rel=1e-9)
    swapped = report.paired_comparison(b, a)
    assert (swapped["only_a"], swapped["only_b"]) == (got["only_b"], got["only_a"])
    assert swapped["mcnemar_p"] == pytest.approx(got["mcnemar_p"], rel=1e-12)


def test_paired_comparison_known_value_and_rejects_different_questions():
    a = {str(i): i < 9 for i in range(20)}  # 9 right only in a, none only in b
    got = report.paired_comparison(a, {str(i): False for i in range(20)})
    assert (got["only_a"], got["only_b"], got["mcnemar_p"]) == (9, 0, 2 / 2**9)
    with pytest.raises(ValueError, match="different questions"):
        report.paired_comparison({"1": True}, {"2": True})


def test_read_correct_names_the_bad_line(tmp_path):
    from cotjax.records import RecordError

    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": 1, "correct": true}\n{"id": 2, "correct": "yes"}\n')
    with pytest.raises(RecordError, match=r"predictions.jsonl:2: .*boolean 'correct'"):
        report.read_correct(path)
    path.write_text('{"id": 1, "correct": true}\n{"id": 1, "correct": false}\n')
    with pytest.raises(RecordError, match=r"predictions.jsonl:2: question id 1 appears twice"):
        report.read_correct(path)
    path.write_text('{"id": 1, "correct_flexible": true}\n')
    with pytest.raises(RecordError, match=r"boolean 'correct' \(its boolean fields: correct_f"):
        report.read_correct(path)
    path.write_text("\n")
    with pytest.raises(RecordError, match="no predictions"):
        report.read_correct(path)
