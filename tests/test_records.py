"""Record adapters, bad-input errors and the held-out validation split."""

import json
import re
import sys

import pytest

from configs.base import get_config
from cotjax import records
from cotjax.records import BadRecord, CoTRecord, RecordError

NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                "many clips in May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
              "<<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _data(**overrides):
    c = get_config()
    c.data.update(overrides)
    return c.data


def test_gsm8k_splits_chain_and_answer_and_strips_calculator():
    rec = records.parse_gsm8k(NATALIA, "f:1")
    assert rec.chain == ("Natalia sold 48/2 = 24 clips in May.\n"
                         "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert rec.answer == "72"
    assert "<<48/2=24>>" in rec.chain_raw and rec.chain_raw.endswith("April and May.")
    assert rec.id == "f:1"


def test_gsm8k_keeps_calculator_when_asked_and_drops_thousands_commas():
    raw = dict(NATALIA, answer=NATALIA["answer"].replace("#### 72", "#### 1,080"))
    rec = records.parse_gsm8k(raw, "f:1", strip_calc=False)
    assert rec.chain == rec.chain_raw and "<<48/2=24>>" in rec.chain
    assert rec.answer == "1080"


def test_gsm8k_without_hashes_is_a_bad_record():
    with pytest.raises(BadRecord, match=r"f:7: field 'answer' needs exactly one '####'"):
        records.parse_gsm8k({"question": "q", "answer": "just 72"}, "f:7")


def test_aqua_sample_file():
    recs, report = records.parse_all(records.read_json_lines("data/aqua/format_sample.jsonl"),
                                     records.parse_aqua)
    assert report == records.LoadReport(read=5, skipped=0)
    first = recs[0]
    assert first.options == (("A", "9"), ("B", "12"), ("C", "18"), ("D", "27"), ("E", "54"))
    assert first.answer == "C"
    assert first.chain == ("27 pens make 27 / 3 = 9 groups of 3 pens.\n"
                           "Each group costs $2, so the cost is 9 * 2 = 18 dollars.")
    # Every sample's trailing answer line ("ANSWER:C", "The answer is B", ...) is removed.
    assert [r.chain.split("\n")[-1] for r in recs[1:]] == [
        "Adding the equations gives 2x = 50, so x = 25.",
        "60 km/h = 60 * 1000 / 3600 m/s = 50/3 m/s.",
        "35% of 70 = 0.35 * 70 = 24.5",
        "Area = 12 * 6 = 72.",
    ]
    assert [r.answer for r in recs] == ["C", "C", "B", "C", "D"]


@pytest.mark.parametrize("line,stripped", [
    ("Answer: C", True), ("ANSWER:C", True), ("The answer is B", True), ("Answer D", True),
    ("Correct answer is C", True), ("Hence, the answer is option (E).", True), ("C", True),
    ("So x = 25.", False), ("A cat ate 3 mice.", False),
])
def test_aqua_answer_line(line, stripped):
    out = records.strip_aqua_answer_line("Step one.\n" + line)
    assert out == ("Step one." if stripped else "Step one.\n" + line)


def test_aqua_correct_letter_not_among_options():
    raw = {"question": "q", "options": ["A)1", "B)2"], "rationale": "r", "correct": "E"}
    with pytest.raises(BadRecord, match=r"f:3: field 'correct' = 'E' is not among the options"):
        records.parse_aqua(raw, "f:3")


def test_malformed_json_names_file_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [NATALIA, NATALIA, "{not json"])
    with pytest.raises(RecordError, match=rf"{tmp_path}/d.jsonl:3: malformed JSON: Expecting "
                                          r"property name enclosed in double quotes \(column 2\)$"):
        records.load_pool(_data(path=str(path)))
    recs, report = records.load_pool(_data(path=str(path), on_bad_record="skip"))
    assert len(recs) == 2 and report.skipped == 1  # a malformed line is a skippable record
    path.write_text('{"question": "unterminated')
    with pytest.raises(RecordError, match=r"d.jsonl:1: malformed JSON: Unterminated string "
                                          r"starting at \(column 14\)"):  # once "at at column"
        records.load_pool(_data(path=str(path)))


def test_invalid_utf8_names_file_and_line_and_can_be_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps(NATALIA).encode()
    path.write_bytes(good + b"\n" + b'{"question": "caf\xe9", "answer": "x #### 1"}\n' + good + b"\n")
    with pytest.raises(RecordError, match=rf"{tmp_path}/d.jsonl:2: not UTF-8 \(byte 18 "):
        records.load_pool(_data(path=str(path)))
    recs, report = records.load_pool(_data(path=str(path), on_bad_record="skip"))
    assert len(recs) == 2 and report.read == 3 and report.skipped == 1
    assert report.skip_reasons[0].startswith(f"{path}:2: not UTF-8")


@pytest.mark.parametrize("answer", ["twelve", "12 apples", "", "1/2"])
def test_a_gsm8k_answer_that_is_not_a_number_is_a_bad_record(answer):
    raw = {"question": "q", "answer": f"She has 12.\n#### {answer}"}
    with pytest.raises(BadRecord, match=r"f:4: field 'answer' ends in '#### .*', not a number"):
        records.parse_gsm8k(raw, "f:4")
    assert records.parse_gsm8k({"question": "q", "answer": "x\n#### -1,200.5"}, "f").answer \
        == "-1200.5"


def test_missing_field_names_field_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [NATALIA, {"question": "q"}])
    with pytest.raises(RecordError, match=r"d.jsonl:2: missing field 'answer'"):
        records.load_pool(_data(path=str(path)))


def test_bad_records_error_or_counted_skip(tmp_path):
    bad = {"question": "q", "answer": "no final answer"}
    path = _write_jsonl(tmp_path / "d.jsonl", [NATALIA, bad, NATALIA])
    with pytest.raises(BadRecord, match="d.jsonl:2"):
        records.load_pool(_data(path=str(path)))
    recs, report = records.load_pool(_data(path=str(path), on_bad_record="skip"))
    assert len(recs) == 2 and report.read == 3 and report.skipped == 1
    assert "d.jsonl:2" in report.skip_reasons[0]


def test_empty_dataset_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [])
    with pytest.raises(RecordError, match="gave no records"):
        records.load_pool(_data(path=str(path)))
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "x"}])
    with pytest.raises(RecordError, match=r"gave no records \(1 read, 1 skipped\)"):
        records.load_pool(_data(path=str(path), on_bad_record="skip"))


def test_generic_fields_json_and_jsonl(tmp_path):
    rows = [{"q": "2+2?", "steps": "2+2 = 4", "final": "4", "key": "x1"},
            {"q": "Pick", "steps": "B is right", "final": "b", "choices": ["A)no", "B)yes"]}]
    fields = dict(question="q", chain="steps", answer="final", options="choices", id="key")
    as_list = tmp_path / "d.json"
    as_list.write_text(json.dumps(rows))
    for path in (_write_jsonl(tmp_path / "d.jsonl", rows), as_list):
        recs, _ = records.load_pool(_data(source="jsonl", path=str(path), fields=fields))
        assert recs[0] == CoTRecord("2+2?", "2+2 = 4", "4", id="x1", chain_raw="2+2 = 4")
        assert recs[1].options == (("A", "no"), ("B", "yes")) and recs[1].answer == "B"


def test_generic_missing_renamed_field(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(RecordError, match=r"d.jsonl:1: missing field 'chain'"):
        records.load_pool(_data(source="jsonl", path=str(path)))


@pytest.mark.parametrize("source,package", [("hf", "datasets"), ("tfds", "tensorflow_datasets")])
def test_optional_sources_fail_clearly_without_their_package(monkeypatch, source, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    with pytest.raises(RecordError, match=f"needs .*{package.split('_')[0]}"):
        records.load_pool(_data(source=source))


def test_synthetic_source_calls_the_generator(monkeypatch):
    calls = []

    def generate_rows(n, min_steps, max_steps, seed):
        calls.append((n, min_steps, max_steps, seed))
        return [{"question": f"q{i}", "chain": "c", "answer": str(i), "id": f"s{i}"}
                for i in range(n)]

    monkeypatch.setattr(records.synthetic, "generate_rows", generate_rows)
    data = _data(source="synthetic", synthetic_n=40, validation_size=10)
    train, report = records.load_records(data, "train")
    assert calls == [(40, 2, 6, 0)] and len(train) == 30 and report.read == 40


def test_validation_split_is_exact_disjoint_and_stable():
    pool = [CoTRecord(f"question {i}", "c", "1") for i in range(100)]
    train, val = records.validation_split(pool, 10, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert {r.question for r in train}.isdisjoint({r.question for r in val})
    # Keyed on content: reordering the file does not move the held-out records.
    _, val_rev = records.validation_split(pool[::-1], 10, seed=3)
    assert {r.question for r in val_rev} == {r.question for r in val}
    _, val_other = records.validation_split(pool, 10, seed=4)
    assert val_other != val


def test_gsm8k_default_splits():
    data = get_config().data
    train, report = records.load_records(data, "train")
    val, _ = records.load_records(data, "validation")
    assert report.read == 7473 and len(train) == 6973 and len(val) == 500
    assert {r.id for r in train}.isdisjoint({r.id for r in val})
    # Pinned: the validation slice must never move silently (it defines reported numbers).
    assert [r.id for r in val[:3]] == ["data/gsm8k/train.jsonl:21", "data/gsm8k/train.jsonl:38",
                                       "data/gsm8k/train.jsonl:63"]
    capped, _ = records.load_records(_data(max_examples=5), "train")
    assert capped == train[:5]


def test_unknown_split():
    with pytest.raises(ValueError, match="split must be one of"):
        records.load_records(get_config().data, "test")


# ---------------------------------------------------------------------------------------------
# Chat "messages" records and think tags (teacher exports, reasoning-model datasets)


def _messages(reply, **extra):
    return {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "What is 6 * 7?"},
                         {"role": "assistant", "content": reply}], **extra}


def test_messages_with_a_think_block_train_on_the_block():
    rec = records.parse_messages(_messages("<think>\n6 * 7 = 42\n</think>\nThe answer is \\boxed{42}."),
                                 "t.jsonl:1")
    assert (rec.question, rec.chain, rec.answer) == ("What is 6 * 7?", "6 * 7 = 42", "42")


def test_messages_without_think_use_the_text_before_the_answer():
    rec = records.parse_messages(_messages("6 * 7 = 42.\nSo the answer is 42.\nAnything else?"),
                                 "t.jsonl:2")
    assert (rec.chain, rec.answer) == ("6 * 7 = 42.", "42")
    rec = records.parse_messages(_messages("<think>6*7=42</think>Answer: (C)"), "t.jsonl:3")
    assert rec.answer == "C"
    rec = records.parse_messages(_messages("<think>6*7=42</think>forty-two", answer="42"), "w")
    assert rec.answer == "42"  # an answer field wins


@pytest.mark.parametrize("raw, message", [
    (_messages("<think>6 * 7 = 42 and then"), "t.jsonl:4: <think> without a closing </think>"),
    (_messages("<think>6*7=42</think>I am not sure."),
     "t.jsonl:4: no final answer in the assistant turn after </think>"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "t.jsonl:4: no assistant turn"),
    ({"messages": "hello"}, "t.jsonl:4: field 'messages' must be a list"),
    ({"chat": []}, "t.jsonl:4: missing field 'messages'"),
])
def test_bad_messages_records_are_named(raw, message):
    with pytest.raises(records.RecordError, match=re.escape(message)):
        records.parse_messages(raw, "t.jsonl:4")


def test_fields_records_with_think_tags_and_the_messages_format_as_a_source(tmp_path):
    rec = records.parse_fields({"question": "Q?", "chain": "<think>1 + 1 = 2</think> The answer "
                                "is 2.", "answer": "2"}, "f:1")
    assert rec.chain == "1 + 1 = 2"
    f = tmp_path / "chat.jsonl"
    f.write_text("\n".join(json.dumps(_messages(f"<think>{i} + 1 = {i + 1}</think>The answer is "
                                                f"{i + 1}.")) for i in range(12)) + "\n")
    from cotjax import defaults

    c = defaults.get_config()
    c.data.source, c.data.path, c.data.format, c.data.validation_size = "jsonl", str(f), "messages", 2
    train, _ = records.load_records(c.data, "train")
    assert len(train) == 10 and all(r.chain.endswith(f"= {r.answer}") for r in train)
