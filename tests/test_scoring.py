"""Answer extraction, step checking, scoring and reports (pure Python, no JAX)."""

from __future__ import annotations

import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotjax import report
from cotjax.report import format_table, write_report
from cotjax.scoring import (
    answers_equal,
    extract_answer,
    extract_answer_flexible,
    majority_vote,
    score_prediction,
    summarize,
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
    ],
)
def test_gsm8k_strict(text, expected):
    assert extract_answer(text, "gsm8k") == expected


@pytest.mark.parametrize(
    "text",
    ["", "no numbers here", "She has 5 apples and 7 pears.", "The answer is unclear.", "###"],
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
