"""The synthetic multi-step arithmetic task: deterministic, verifiable, GSM8K-formatted."""

from __future__ import annotations

import json
import re

import ml_collections
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotjax import records, report, synthetic
from cotjax.scoring import extract_answer, score_prediction
from cotjax.steps import check_steps


@settings(deadline=None, max_examples=60)
@given(
    seed=st.integers(0, 2**32 - 1),
    min_steps=st.integers(1, 8),
    extra_steps=st.integers(0, 4),
)
def test_every_chain_checks(seed, min_steps, extra_steps):
    max_steps = min_steps + extra_steps
    for record in synthetic.generate_rows(20, min_steps, max_steps, seed):
        steps = synthetic.num_steps(record)
        assert min_steps <= steps <= max_steps
        report = check_steps(record["chain"])
        assert (report.total, report.valid) == (steps, steps), record["chain"]
        assert report.last_value == record["answer"]
        values = [int(line.rsplit("=", 1)[1]) for line in record["chain"].splitlines()]
        assert all(1 <= v <= synthetic.MAX_VALUE for v in values)


def test_deterministic_by_seed():
    first = synthetic.generate_rows(50, 2, 5, seed=7)
    assert first == synthetic.generate_rows(50, 2, 5, seed=7)
    assert first != synthetic.generate_rows(50, 2, 5, seed=8)
    assert synthetic.generate_rows(10, 2, 5, seed=7) == first[:10]


def test_record_shape_and_ids():
    records = synthetic.generate_rows(30, 1, 6, seed=0)
    assert all(set(r) == {"id", "question", "chain", "answer"} for r in records)
    for index, record in enumerate(records):
        steps = synthetic.num_steps(record)
        assert record["id"] == f"synth-s{steps}-{index:06d}"
        assert record["question"].startswith("Start with ")
        assert record["question"].endswith("What is the result?")
        assert re.fullmatch(r"[0-9]+", record["answer"])
    assert len({r["id"] for r in records}) == len(records)


def test_question_states_every_operand():
    record = synthetic.generate_rows(1, 4, 4, seed=3)[0]
    operands = [line.split()[2] for line in record["chain"].splitlines()]
    start = record["chain"].split()[0]
    numbers = re.findall(r"[0-9]+", record["question"])
    assert numbers == [start, *operands]


def test_all_operations_appear():
    chains = "\n".join(r["chain"] for r in synthetic.generate_rows(200, 3, 3, seed=1))
    for op in "+-*/":
        assert f" {op} " in chains


@pytest.mark.parametrize("n, lo, hi", [(-1, 1, 2), (5, 0, 2), (5, 3, 2)])
def test_bad_arguments(n, lo, hi):
    with pytest.raises(ValueError):
        synthetic.generate_rows(n, lo, hi, seed=0)


def test_write_jsonl_is_gsm8k_format(tmp_path):
    records = synthetic.generate_rows(25, 1, 4, seed=5)
    path = tmp_path / "sub" / "synth.jsonl"
    synthetic.write_jsonl(path, records)
    lines = path.read_text().splitlines()
    assert len(lines) == 25
    for line, record in zip(lines, records):
        row = json.loads(line)
        assert set(row) == {"question", "answer"}
        assert row["question"] == record["question"]
        assert row["answer"].endswith(f"\n#### {record['answer']}")
        assert extract_answer(row["answer"], "gsm8k") == record["answer"]
        scored = score_prediction(row["answer"], record["answer"], "gsm8k")
        assert scored["correct"] and scored["all_steps_valid"]
        assert not scored["answer_differs_from_last_step"]


@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 2**32 - 1))
def test_steps_read_back_from_the_question(seed):
    for record in synthetic.generate_rows(10, 1, 8, seed):
        assert synthetic.steps_in_question(record["question"]) == synthetic.num_steps(record)


def test_steps_in_question_rejects_other_text():
    with pytest.raises(ValueError, match="not a synthetic question"):
        synthetic.steps_in_question("Janet has 3 ducks. How many?")


def test_accuracy_by_steps_and_report(tmp_path, capsys):
    records = synthetic.generate_rows(12, 1, 3, seed=5)
    rows = []
    for i, r in enumerate(records):  # every other row answered correctly
        text = f"{r['chain']}\nThe answer is {r['answer'] if i % 2 == 0 else 0}."
        rows.append({"question": r["question"], **score_prediction(text, r["answer"], "gsm8k")})
    table = report.accuracy_by_steps(rows)
    assert sum(t["n"] for t in table.values()) == 12
    assert sum(t["correct"] for t in table.values()) == 6
    for steps, t in table.items():
        mine = [i for i, r in enumerate(records) if synthetic.num_steps(r) == steps]
        assert t["correct"] == sum(i % 2 == 0 for i in mine)
        assert t["steps_valid_share"] == 1.0  # the chains are the generator's own
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report.main(["by-steps", str(tmp_path / "out" / "by_steps"), f"cot={preds}"])
    saved = json.loads((tmp_path / "out" / "by_steps.json").read_text())
    assert saved["cot"] == {str(k): v for k, v in table.items()}
    assert (tmp_path / "out" / "by_steps.png").stat().st_size > 1000
    assert capsys.readouterr().out.splitlines()[0].startswith("operations")


def test_the_synthetic_source_gives_records_with_raw_chains():
    data = ml_collections.ConfigDict(dict(
        source="synthetic", synthetic_n=5, synthetic_min_steps=1, synthetic_max_steps=3,
        synthetic_seed=2))
    recs, report_ = records.load_pool(data)
    rows = synthetic.generate_rows(5, 1, 3, 2)
    assert [(r.id, r.question, r.chain, r.answer, r.chain_raw) for r in recs] == [
        (w["id"], w["question"], w["chain"], w["answer"], w["chain"]) for w in rows]
    assert report_.read == 5 and report_.skipped == 0
