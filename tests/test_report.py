"""`cotjax report`: rescoring predictions files under the current rules, paired tests from files.

Pure Python, no JAX.
"""

from __future__ import annotations

import json
import random
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotjax import report
from cotjax.records import RecordError
from cotjax.scoring import score_prediction, score_samples, summarize

# A summary's fields that `cotjax eval` writes beside the scores; rescoring keeps them.
RUN_FIELDS = {"prompting": "finetuned", "template": "chat", "model": "runs/x step latest",
              "data": "validation split of data/gsm8k/train.jsonl", "max_new_tokens": 256,
              "decode_seconds": 12.5, "maj_n": 3, "temperature": 0.7,
              "sample_decode_seconds": 40.0}

QUESTIONS = [  # (greedy generation, gold, sampled generations)
    ("3 * 4 = 12. Answer: 12", "12", ["Answer: 12", "so 12", "so 13"]),
    ("The final answer is 7.", "7", ["so 7", "so 7", "The answer is 8"]),
    ("5 + 5 = 10 and so 10", "10", ["#### 10", "so 9", "so 9"]),
    ("The answer is 3.", "4", ["so 4", "so 4", "so 4"]),
]


def _old_style_rows() -> list[dict]:
    """Rows as an earlier `cotjax eval` wrote them: strict answers by the old rule (only "The
    answer is" and "####"), samples and votes with the flexible rule only."""
    rows = []
    for i, (generation, gold, samples) in enumerate(QUESTIONS):
        row = {"id": f"data.jsonl:{i + 1}", "question": f"question {i}", "prompt_tokens": 9,
               "generation": generation, "finish": "eos", "new_tokens": 5,
               **score_prediction(generation, gold, "gsm8k")}
        if "The answer is" not in generation:  # the old strict rule found no answer
            row["extracted"], row["correct"] = None, False
        flexible = [s["extracted_flexible"]
                    for s in score_samples(samples, gold, "gsm8k")["samples"]]
        row["samples"] = [{"generation": g, "finish": "eos", "extracted": a, "correct": a == gold}
                          for g, a in zip(samples, flexible)]
        vote = max(flexible, key=flexible.count)
        row["maj_answer"], row["maj_correct"] = vote, vote == gold
        rows.append(row)
    return rows


def _write_run(directory: pathlib.Path, name: str = "cot") -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows = _old_style_rows()
    old = summarize(rows, "gsm8k")
    old = {k: v for k, v in old.items() if not k.endswith("_ci95")}  # written before intervals
    old["sample_accuracy"] = 0.5  # a stale figure
    predictions = directory / f"{name}_predictions.jsonl"
    predictions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (directory / f"{name}_summary.json").write_text(json.dumps({**old, **RUN_FIELDS}, indent=2))
    return predictions


def test_summary_path_for_names_the_summary_beside_a_predictions_file(tmp_path):
    assert report.summary_path_for(tmp_path / "predictions.jsonl") == tmp_path / "summary.json"
    assert report.summary_path_for("r/cot_maj8_predictions.jsonl") == pathlib.Path(
        "r/cot_maj8_summary.json")
    with pytest.raises(ValueError, match="not a predictions file"):
        report.summary_path_for(tmp_path / "cot_metrics.jsonl")


def test_prediction_files_walks_directories(tmp_path):
    a = _write_run(tmp_path / "gsm8k", "b")
    b = _write_run(tmp_path / "gsm8k" / "sweep", "a")
    (tmp_path / "gsm8k" / "cot_metrics.jsonl").write_text("{}\n")
    plain = tmp_path / "eval" / "predictions.jsonl"
    plain.parent.mkdir()
    plain.write_text("")
    assert report.prediction_files([tmp_path]) == [plain, a, b]
    assert report.prediction_files([a, tmp_path / "gsm8k"]) == [a, b]  # each file once
    with pytest.raises(FileNotFoundError, match="nothing: no such file"):
        report.prediction_files([tmp_path / "nothing"])
    with pytest.raises(ValueError, match="cot_metrics.jsonl: not a predictions file"):
        report.prediction_files([tmp_path / "gsm8k" / "cot_metrics.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no predictions.jsonl"):
        report.prediction_files([tmp_path / "empty"])


def test_rescore_rewrites_scores_and_keeps_the_run_fields(tmp_path, capsys):
    predictions = _write_run(tmp_path)
    summary_path = tmp_path / "cot_summary.json"
    old_summary = json.loads(summary_path.read_text())
    old_lines = predictions.read_text().splitlines()
    rerank = tmp_path / "rerank" / "predictions.jsonl"  # a reranking's file: no summary beside it
    rerank.parent.mkdir()
    rerank.write_text(json.dumps({"problem": 0, "selected": {}}) + "\n")

    report.main(["rescore", str(tmp_path)])
    out = capsys.readouterr().out
    assert str(predictions) in out and "1 of 1 predictions files rewritten" in out
    assert f"skipped 1 predictions file(s) with no summary beside them (not eval predictions): " \
           f"{rerank}" in out
    with pytest.raises(FileNotFoundError, match="no summary.json beside it"):
        report.main(["rescore", str(rerank)])  # named, it is an error
    assert "accuracy                   0.0000 -> 0.5000" in out  # strict: Answer:, final answer
    assert "maj_accuracy_flexible" in out and "(moved)" in out

    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    summary = json.loads(summary_path.read_text())
    assert [r["extracted"] for r in rows] == ["12", "7", None, "3"]
    assert [r["maj_answer"] for r in rows] == ["12", "8", "10", None]  # strict votes
    assert [r["maj_answer_flexible"] for r in rows] == ["12", "7", "9", "4"]
    assert rows[0]["samples"][0] == {"generation": "Answer: 12", "finish": "eos",
                                     "extracted": "12", "correct": True,
                                     "extracted_flexible": "12", "correct_flexible": True}
    # the rows keep their other fields and key order; new fields come last
    assert list(rows[0])[:len(json.loads(old_lines[0]))] == list(json.loads(old_lines[0]))
    assert summary == {**summarize(rows, "gsm8k"), **RUN_FIELDS}
    assert summary["sample_accuracy"] == 2 / 12 and summary["sample_accuracy_flexible"] == 8 / 12
    assert summary["maj_accuracy"] == 0.5 and summary["maj_accuracy_flexible"] == 0.75
    assert summary["accuracy_ci95"] == [0.150039, 0.849961]
    assert old_summary["accuracy"] == 0.0 and summary["accuracy"] == 0.5

    # the rewritten files are what `cotjax eval` writes, and now check clean
    assert predictions.read_text() == "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                              for r in rows)
    assert summary_path.read_text() == json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    report.main(["check", str(predictions)])
    assert "unchanged" in capsys.readouterr().out
    before = predictions.stat().st_mtime_ns, summary_path.stat().st_mtime_ns
    report.main(["rescore", str(predictions)])  # nothing to change: nothing written
    assert (predictions.stat().st_mtime_ns, summary_path.stat().st_mtime_ns) == before


def test_check_writes_nothing_and_fails_on_a_stale_file(tmp_path, capsys):
    predictions = _write_run(tmp_path)
    text = predictions.read_text(), (tmp_path / "cot_summary.json").read_text()
    with pytest.raises(SystemExit, match="1 of 1 predictions files would change"):
        report.main(["check", str(tmp_path)])
    with pytest.raises(SystemExit, match="would change"):
        report.main(["rescore", "--check", str(predictions)])
    assert (predictions.read_text(), (tmp_path / "cot_summary.json").read_text()) == text
    result = report.rescore_file(predictions)
    assert result.changed and result.rows_changed == 4
    assert result.summary_changed["accuracy"] == (0.0, 0.5)
    assert result.summary_changed["maj_accuracy_flexible"] == (None, 0.75)
    assert result.row_fields_changed["samples[].extracted"] == 4
    assert "model" not in result.summary_changed
    assert "sample_accuracy" in result.describe()


def test_rescore_names_what_it_cannot_read(tmp_path):
    predictions = tmp_path / "x_predictions.jsonl"
    predictions.write_text(json.dumps({"id": 1, "generation": "The answer is 3"}) + "\n")
    with pytest.raises(FileNotFoundError, match="no x_summary.json beside it"):
        report.rescore_file(predictions)
    (tmp_path / "x_summary.json").write_text(json.dumps({"n": 1}))
    with pytest.raises(RecordError, match="no 'task' field"):
        report.rescore_file(predictions)
    (tmp_path / "x_summary.json").write_text(json.dumps({"task": "gsm8k"}))
    with pytest.raises(RecordError, match=r"x_predictions.jsonl:1: .*without gold"):
        report.rescore_file(predictions)
    predictions.write_text(json.dumps({"generation": "4", "gold": "4", "samples": [{}]}) + "\n")
    with pytest.raises(RecordError, match=r"samples\[\].generation"):
        report.rescore_file(predictions)
    with pytest.raises(SystemExit):
        report.main(["rescore"])


def test_paired_from_files_matches_the_cli(tmp_path, capsys):
    predictions = _write_run(tmp_path)
    report.main(["rescore", str(predictions)])
    capsys.readouterr()
    got = report.paired_from_files(predictions, predictions, "maj_correct", "correct")
    report.main(["paired", str(predictions), str(predictions), "maj_correct", "correct"])
    assert json.loads(capsys.readouterr().out) == got
    assert (got["field_a"], got["field_b"], got["correct_a"], got["correct_b"]) == (
        "maj_correct", "correct", 2, 2)
    same = report.paired_from_files(predictions, predictions, "correct_flexible")
    assert same["field_b"] == "correct_flexible" and same["mcnemar_p"] == 1.0


def _scored(generation, gold, finish="eos"):
    return {**score_prediction(generation, gold, "gsm8k"), "finish": finish}


@pytest.mark.parametrize("generation,gold,finish,kind", [
    ("3 * 4 = 12. The answer is 12.", "12", "eos", None),
    ("3 * 4 = 12 and 12 + 1 = 14. The answer is 14.", "13", "eos", "arithmetic"),
    ("3 * 4 = 12 and 12 + 2 = 14. The answer is 14.", "13", "eos", "setup"),
    ("3 * 4 = 12. The answer is 15.", "12", "eos", "answer_not_from_chain"),
    ("It must be fifteen. The answer is 15.", "12", "eos", "no_claims"),
    ("3 * 4 = 12 and so on and on", "12", "eos", "no_answer"),
    ("3 * 4 = 13 and 13 + 1 = 14 and", "13", "length", "cut"),  # cut comes before arithmetic
])
def test_error_kind_names_why_an_answer_is_wrong(generation, gold, finish, kind):
    row = _scored(generation, gold, finish)
    assert report.error_kind(row) == kind


def test_error_split_counts_every_prediction_once(tmp_path):
    rows = [_scored("3 * 4 = 12. The answer is 12.", "12"),
            _scored("3 * 4 = 12 and 12 + 2 = 14. The answer is 14.", "13"),
            _scored("3 * 4 = 12 and 12 + 2 = 14. The answer is 14.", "13"),
            _scored("3 * 4 = 11. The answer is 11.", "12", "length")]
    split = report.error_split(rows)
    assert split == {"n": 4, "correct": 1, "wrong": 3, "cut": 1, "no_answer": 0, "no_claims": 0,
                     "arithmetic": 0, "answer_not_from_chain": 0, "setup": 2}
    assert split["correct"] + sum(split[k] for k in report.ERROR_KINDS) == split["n"]


def test_paired_sample_directories_compare_pass_at_k(tmp_path):
    """A `cotjax sample` directory counts a problem right when any of its samples is."""
    for name, right in (("a", {(0, 1), (1, 0)}), ("b", {(1, 1), (2, 0), (2, 1)})):
        d = tmp_path / name
        d.mkdir()
        (d / "samples-00000-of-00001.jsonl").write_text("".join(
            json.dumps({"problem": p, "sample": s, "id": f"q{p}", "correct": (p, s) in right}) + "\n"
            for p in range(3) for s in range(2)))
    got = report.paired_from_files(tmp_path / "a", tmp_path / "b")
    assert (got["n"], got["correct_a"], got["correct_b"], got["both"]) == (3, 2, 2, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no samples-\\*.jsonl shards"):
        report.read_correct(tmp_path / "empty")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_one_run_a_side_is_mcnemar(pairs):
    a = {f"q{i}": x for i, (x, _) in enumerate(pairs)}
    b = {f"q{i}": y for i, (_, y) in enumerate(pairs)}
    single, pooled = report.paired_comparison(a, b), report.replicate_comparison([a], [b])
    assert (pooled["more_a"], pooled["more_b"], pooled["sign_p"]) == (
        single["only_a"], single["only_b"], single["mcnemar_p"])
    assert (pooled["correct_a"], pooled["correct_b"]) == ([single["correct_a"]], [single["correct_b"]])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.lists(st.integers(0, 2**6 - 1), min_size=1, max_size=30))
def test_replicates_swap_with_the_arms_and_ignore_their_order(runs, questions):
    """Each question's bits say which of the (up to 6) runs got it right."""
    run = lambda i: {f"q{j}": bool(bits >> i & 1) for j, bits in enumerate(questions)}  # noqa: E731
    a, b = [run(i) for i in range(runs)], [run(3 + i) for i in range(runs)]
    got = report.replicate_comparison(a, b)
    back = report.replicate_comparison(b[::-1], a[::-1])
    assert (back["more_a"], back["more_b"], back["sign_p"]) == (got["more_b"], got["more_a"], got["sign_p"])
    assert got["more_a"] + got["more_b"] <= got["n"] == len(questions)
    assert report.replicate_comparison(a, a)["more_a"] == 0


def test_replicate_shares_decide_each_question(tmp_path, capsys):
    a = [{"q1": True, "q2": True, "q3": False}, {"q1": True, "q2": False, "q3": False}]
    b = [{"q1": False, "q2": True, "q3": False}, {"q1": False, "q2": True, "q3": True}]
    files = []
    for name, run in zip(("a0", "a1", "b0", "b1"), a + b):
        files.append(tmp_path / f"{name}_predictions.jsonl")
        files[-1].write_text("".join(json.dumps({"id": q, "correct": c}) + "\n" for q, c in run.items()))
    got = report.paired_from_files(files[:2], files[2:])
    # q1: A 2 of 2 against B 0 of 2; q2: 1 of 2 against 2 of 2; q3: 0 of 2 against 1 of 2
    assert (got["correct_a"], got["correct_b"], got["more_a"], got["more_b"], got["sign_p"]) == (
        [2, 1], [1, 2], 1, 2, 1.0)
    report.main(["paired", f"{files[0]},{files[1]}", f"{files[2]},{files[3]}"])
    assert json.loads(capsys.readouterr().out) == got
    with pytest.raises(ValueError, match="the same number of runs .got 2 and 1."):
        report.paired_from_files(files[:2], files[2])
    with pytest.raises(ValueError, match="no runs given"):
        report.replicate_comparison([], [])
    report.main(["paired", f"{files[0]},{files[1]},", f"{files[2]},{files[3]}"])  # a stray comma
    assert json.loads(capsys.readouterr().out) == got
    files[3].write_text(json.dumps({"id": "q9", "correct": True}) + "\n")
    with pytest.raises(ValueError, match="the runs scored different questions"):
        report.paired_from_files(files[:2], files[2:])


def test_runs_of_one_recipe_do_not_lean_either_way():
    """Every run drawn alike (a hard question: right 5% of the time): with two runs a side the
    sign test finds nothing, while counting 'right in more of its runs' with 2 runs against 1
    would favour the 2 (why unequal counts are refused)."""
    rng = random.Random(0)
    p = [rng.choice((0.05, 0.3)) for _ in range(4000)]
    runs = [{f"q{i}": rng.random() < pi for i, pi in enumerate(p)} for _ in range(4)]
    got = report.replicate_comparison(runs[:2], runs[2:])
    assert got["sign_p"] > 0.05
    two, one = runs[:2], runs[2]
    more_two = sum(sum(r[q] for r in two) > 0 and not one[q] for q in one)
    more_one = sum(one[q] and sum(r[q] for r in two) < 2 for q in one)
    assert report.sign_test_p(more_two, more_one) < 1e-4
