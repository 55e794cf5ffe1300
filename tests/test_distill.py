"""`cotjax distill`: every filter on constructed chains (a right answer with an invalid step,
duplicate paths, a length-cut chain, an answer the last step contradicts), the per-problem cap,
the human union, the funnel, and the output as a training source (data.train_path)."""

import json

import pytest

from cotjax import distill, records as records_lib
from cotjax.cli import main as cli_main
from cotjax.report import read_sample_dirs, read_samples
from cotjax.scoring import chain_before_answer, score_prediction

Q1 = "Tom has 3 bags of 4 apples and eats 2. How many are left?"
Q2 = "A pen costs $2. How much do 5 pens cost?"


def _row(question, gold, text, sample, finish="eos", problem=0):
    return {"problem": problem, "id": f"p{problem}", "sample": sample, "question": question,
            "generation": text, "finish": finish, "model": "teacher step 9", "logprob": -3.5,
            **score_prediction(text, gold, "gsm8k")}


ROWS = [
    _row(Q1, "10", "3 * 4 = 12 apples.\n12 - 2 = 10 left.\nThe answer is 10.", 0),
    _row(Q1, "10", "3 x 4 = 12 apples in all.\n12 - 2 = 10.\nThe answer is 10.", 1),  # same path
    _row(Q1, "10", "He has 4 + 4 + 4 = 12.\n12 - 2 = 10.\nThe answer is 10.\nQuestion: x", 2),
    _row(Q1, "10", "3 * 4 = 11 apples.\n12 - 2 = 10.\nThe answer is 10.", 3),  # invalid step
    _row(Q1, "10", "4 * 3 = 12.\n12 - 2 = 10.\nThe answer is 10.", 4, finish="length"),
    _row(Q1, "10", "3 * 4 = 12.\n12 - 3 = 9.\nThe answer is 10.", 5),  # contradicts its step
    _row(Q1, "10", "3 * 4 = 12.\nThe answer is 12.", 6),  # wrong
    _row(Q2, "10", "5 * $2 = $10.\nSo the answer is $10.", 0, problem=1),
    _row(Q2, "10", "2 + 2 + 2 + 2 + 2 = 10.\nThe answer is 10.", 1, problem=1),
]


def test_each_filter_removes_what_it_names_and_the_funnel_counts_it():
    records, summary = distill.select(ROWS, max_per_problem=4)
    assert summary["funnel"] == {"sampled": 9, "correct": 8, "steps_valid": 7, "consistent": 6,
                                 "finished": 5, "with_answer_statement": 5, "distinct": 4,
                                 "kept": 4}
    kept = {(r["problem"], r["sample"]) for r in records}
    assert kept == {(0, 0), (0, 2), (1, 0), (1, 1)}  # sample 1 repeats sample 0's path
    assert summary["per_problem"]["p0"] == {"sampled": 7, "passed": 3, "distinct": 2, "kept": 2}
    assert summary["problems_with_kept_chain"] == 2 and summary["kept_per_problem"] == 2.0


@pytest.mark.parametrize("off, extra", [("correct", {(0, 6)}), ("steps_valid", {(0, 3)}),
                                        ("consistent", {(0, 5)}), ("finished", {(0, 4)})])
def test_switching_a_filter_off_lets_its_chain_through(off, extra):
    filters = [f for f in distill.FILTERS if f != off]
    records, summary = distill.select(ROWS, filters=filters, max_per_problem=9)
    kept = {(r["problem"], r["sample"]) for r in records}
    assert extra <= kept
    assert off not in summary["funnel"]


def test_records_train_on_the_chain_and_the_gold_answer():
    records, _ = distill.select(ROWS, max_per_problem=4)
    r = next(r for r in records if (r["problem"], r["sample"]) == (0, 2))
    assert r["chain"] == "He has 4 + 4 + 4 = 12.\n12 - 2 = 10."  # no statement, no run-on
    assert r["answer"] == "10" and r["source"] == "sampled" and r["model"] == "teacher step 9"
    r = next(r for r in records if (r["problem"], r["sample"]) == (1, 0))
    assert r["chain"] == "5 * $2 = $10."  # "So the answer is" leaves with its statement
    assert r["path"] == ["5*2=10"]


def test_cap_and_human_union():
    human = [records_lib.CoTRecord(Q1, "3*4 = 12\n12-2 = 10", "10", id="h1",
                                   chain_raw="3*4 = <<3*4=12>>12\n12-2 = <<12-2=10>>10")]
    records, summary = distill.select(ROWS, max_per_problem=1, human=human)
    by_source = [(r["source"], r.get("sample")) for r in records if r["question"] == Q1]
    # the human chain takes path (3*4, 12-2), so sample 0 (the same path) is not a new one
    assert by_source == [("human", None), ("sampled", 2)]
    assert summary["human_records"] == 1


def test_matched_control_swaps_each_kept_chain_for_its_human_chain():
    """The count-matched control has the distilled file's record count and per-problem counts,
    and only human chains: the student's extra updates without the teacher's text."""
    human = [records_lib.CoTRecord(Q1, "3*4 = 12\n12-2 = 10", "10", id="h1"),
             records_lib.CoTRecord(Q2, "5*2 = 10", "10", id="h2")]
    records, _ = distill.select(ROWS, max_per_problem=4, human=human)
    control = distill.matched_control(records)
    # 2 human + 2 new paths: each problem's sample 0 has its human chain's path
    assert len(control) == len(records) == 4
    count = lambda rs: sorted((r["question"], r["answer"]) for r in rs)  # noqa: E731
    assert count(control) == count(records)
    assert {r["chain"] for r in control} == {"3*4 = 12\n12-2 = 10", "5*2 = 10"}
    assert sorted(r["replaces_sample"] for r in control if r["source"] == "human_copy") == [1, 2]
    with pytest.raises(ValueError, match="has no human record"):
        distill.matched_control(records[1:])  # h1 missing: a kept Q1 chain has no stand-in
    with pytest.raises(ValueError, match="--control needs --human"):
        distill.matched_control([r for r in records if r["source"] == "sampled"])


def test_cli_control_file_matches_the_kept_file(tmp_path, capsys):
    """--human=FILE --control: the control has the kept file's record count, only human chains;
    a kept chain with no human record is refused before any file is written."""
    d = _sample_dir(tmp_path)
    human = tmp_path / "human.jsonl"
    human.write_text("".join(json.dumps({"question": q, "answer": f"{c}\n#### 10"}) + "\n"
                             for q, c in ((Q1, "3*4 = 12\n12-2 = 10"), (Q2, "5*2 = 10"))))
    out = tmp_path / "kept.jsonl"
    cli_main(["cotjax", "distill", str(d), f"--out={out}", f"--human={human}", "--control"])
    assert "kept.jsonl.control.jsonl (4 records" in capsys.readouterr().out
    kept, control = _jsonl_rows(out), _jsonl_rows(f"{out}.control.jsonl")
    assert len(control) == len(kept) == json.loads(
        (tmp_path / "kept.jsonl.funnel.json").read_text())["records_written"]
    assert {r["source"] for r in control} == {"human", "human_copy"}
    out2 = tmp_path / "k2.jsonl"
    human.write_text(json.dumps({"question": Q2, "answer": "5*2 = 10\n#### 10"}) + "\n")
    with pytest.raises(SystemExit):
        cli_main(["cotjax", "distill", str(d), f"--out={out2}", f"--human={human}", "--control"])
    assert "has no human record to stand in for it" in capsys.readouterr().err
    assert not list(tmp_path.glob("k2.jsonl*"))


def _jsonl_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_cli_control_needs_human(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["cotjax", "distill", str(_sample_dir(tmp_path)), f"--out={tmp_path / 'k.jsonl'}",
                  "--control"])
    assert "--control needs --human" in capsys.readouterr().err
    assert not (tmp_path / "k.jsonl").exists()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown filter 'corect'"):
        distill.select(ROWS, filters=["corect"])
    with pytest.raises(ValueError, match="max_per_problem must be >= 1"):
        distill.select(ROWS, max_per_problem=0)


def test_chain_before_answer():
    assert chain_before_answer("a\n2 + 2 = 4. The answer is 4.\nMore", "gsm8k") == "a\n2 + 2 = 4."
    assert chain_before_answer("2 + 2 = 4\nTherefore, the final answer is: 4", "gsm8k") == "2 + 2 = 4"
    assert chain_before_answer("no statement 4", "gsm8k") is None
    assert chain_before_answer("Costs differ.\nAnswer: (C)", "aqua") == "Costs differ."


def _sample_dir(tmp_path):
    """ROWS as a `cotjax sample` output directory."""
    d = tmp_path / "samples"
    d.mkdir()
    (d / "samples-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return d


def test_cli_writes_a_training_source(tmp_path, capsys):
    d = _sample_dir(tmp_path)
    out = tmp_path / "kept.jsonl"
    cli_main(["cotjax", "distill", str(d), f"--out={out}", "--max_per_problem=1"])
    printed = capsys.readouterr().out
    assert "sampled 9 -> correct 8 -> steps_valid 7" in printed and "kept 2" in printed
    funnel = json.loads((tmp_path / "kept.jsonl.funnel.json").read_text())
    assert funnel["funnel"]["kept"] == 2 and funnel["sources"] == [str(d)]
    # the output is a data source: data.train_path reads it, minus validation questions
    recs, _ = records_lib.parse_all(records_lib.read_json_lines(out), records_lib.parse_fields)
    assert {(r.chain, r.answer) for r in recs} == {
        ("3 * 4 = 12 apples.\n12 - 2 = 10 left.", "10"), ("5 * $2 = $10.", "10")}


@pytest.mark.parametrize("flag, field, limit, used", [("first_samples", "sample", 2, 4),
                                                      ("max_problems", "problem", 1, 7)])
def test_sub_run_flags_keep_what_the_smaller_run_would_have(tmp_path, capsys, flag, field, limit,
                                                            used):
    """--first_samples=N is a run with K = N, --max_problems=P one on the first P problems."""
    d = _sample_dir(tmp_path)
    out = tmp_path / "kept.jsonl"
    cli_main(["cotjax", "distill", str(d), f"--out={out}", f"--{flag}={limit}"])
    printed = capsys.readouterr().out
    assert f"--{flag}={limit}: {used} of 9 sample lines used" in printed
    want, _ = distill.select([r for r in ROWS if r[field] < limit])
    got = [json.loads(line) for line in open(out)]
    assert [r["chain"] for r in got] == [r["chain"] for r in want] and want
    assert {r["id"] for r in got} == ({"p0"} if flag == "max_problems" else {"p0", "p1"})
    with pytest.raises(SystemExit):
        cli_main(["cotjax", "distill", str(d), f"--out={out}", f"--{flag}=0"])
    assert f"--{flag} must be >= 1" in capsys.readouterr().err


def test_max_problems_refuses_hinted_samples(tmp_path, capsys):
    """A --hint run numbers problems within its unsolved file, so problem < P would pick the
    wrong ones: refused with a message, not a silently wrong selection."""
    d = tmp_path / "hinted"
    d.mkdir()
    (d / "samples-00000-of-00001.jsonl").write_text(
        "".join(json.dumps({**r, "hint": True}) + "\n" for r in ROWS))
    with pytest.raises(SystemExit):
        cli_main(["cotjax", "distill", str(d), f"--out={tmp_path / 'k.jsonl'}", "--max_problems=1"])
    assert "a --hint sample directory numbers them within its unsolved file" in capsys.readouterr().err


def test_train_path_drops_validation_questions(tmp_path, capsys):
    from cotjax import defaults

    rows = [{"question": f"What is {i} + 1?", "chain": f"{i} + 1 = {i + 1}", "answer": str(i + 1)}
            for i in range(30)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"question": r["question"],
                                        "answer": f"{r['chain']}\n#### {r['answer']}"}) + "\n"
                            for r in rows))
    config = defaults.get_config()
    config.data.path = str(pool)
    config.data.validation_size = 5
    validation, _ = records_lib.load_records(config.data, "validation")
    train_file = tmp_path / "kept.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    config.data.train_path = str(train_file)
    train, _ = records_lib.load_records(config.data, "train")
    held = {r.question for r in validation}
    n_held = sum(r["question"] in held for r in rows[:12])
    assert len(train) == 12 - n_held and not {r.question for r in train} & held
    if n_held:
        assert f"dropped {n_held} of 12 records" in capsys.readouterr().out
    assert records_lib.load_records(config.data, "validation")[0] == validation


def test_bad_sample_directories_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no samples-\\*.jsonl shards"):
        read_sample_dirs([str(tmp_path)])
    (tmp_path / "samples-00000-of-00001.jsonl").write_text('{"problem": 0, "sample": 0}\n{oops\n')
    with pytest.raises(ValueError, match="samples-00000-of-00001.jsonl:2"):
        read_sample_dirs([str(tmp_path)])
    assert read_samples(tmp_path / "missing.jsonl") == []


def test_unsolved_problems_are_written_for_a_rationalisation_pass(tmp_path):
    rows = ROWS + [_row("How many legs do 3 cats have?", "12", "3 * 4 = 13.\nThe answer is 13.",
                        0, problem=2)]
    records, summary = distill.select(rows)
    rest = distill.unsolved(rows, summary)
    assert rest == [{"question": "How many legs do 3 cats have?", "answer": "#### 12", "id": "p2"}]
    parsed = records_lib.parse_gsm8k(rest[0], "unsolved:1")  # a raw GSM8K line `cotjax sample` reads
    assert parsed.answer == "12"
