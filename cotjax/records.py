"""The CoT record type and dataset adapters (gsm8k, aqua, jsonl, synthetic, hf, tfds).

Formats of a jsonl / hf / tfds record: `gsm8k`, `aqua`, `fields` (configurable field names) and
`messages` (a chat: {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}, as
teacher exports and reasoning-model datasets ship them). Reasoning inside think tags
(`<think> ... </think>` then the answer) becomes the chain, in `messages` and `fields` alike.

Every source yields raw dicts tagged with where they came from (`file:line`, `hf:name[split]#i`);
one parser per format turns a raw dict into a `CoTRecord`. Two kinds of bad input:

- `RecordError`: the input cannot be read at all (malformed JSON, a missing field, an empty
  dataset). Always raised, naming the file, line and field.
- `BadRecord` (a `RecordError`): the record is readable but unusable (a GSM8K answer without
  `####`, an AQuA `correct` letter that is not among the options). Raised, or skipped and counted
  when `on_bad_record == "skip"`; `LoadReport` carries the count and the first few reasons.

The validation split is held out of the training pool by `validation_split`: a permutation seeded
by `data.validation_seed` alone (not the training shuffle seed), keyed on the question text, so
it does not move when the file is reordered, the numpy version changes or other seeds change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cotjax import answers, synthetic

ON_BAD_RECORD = ("error", "skip")
FORMATS = ("gsm8k", "aqua", "fields", "messages")
SOURCES = ("gsm8k", "aqua", "jsonl", "synthetic", "hf", "tfds")
SPLITS = ("train", "validation")
_MAX_REASONS = 5


@dataclasses.dataclass(frozen=True)
class CoTRecord:
    """One reasoning example: the problem, its chain of steps, and the final answer.

    `options` holds multiple-choice options as (letter, text) pairs (AQuA); `chain_raw` keeps the
    chain with GSM8K calculator annotations (`<<48/2=24>>`) for the step checker even when `chain`
    has them stripped.
    """

    question: str
    chain: str
    answer: str
    options: tuple[tuple[str, str], ...] = ()
    id: str = ""
    chain_raw: str = ""


class RecordError(ValueError):
    """Input that cannot be read: the message names the file:line and field."""


class BadRecord(RecordError):
    """A readable record whose content is unusable; skippable with on_bad_record="skip"."""


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Field names of a generic JSON/JSONL/HF record (`options` and `id` may be absent)."""

    question: str = "question"
    chain: str = "chain"
    answer: str = "answer"
    options: str = "options"
    id: str = "id"


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What loading did: raw records read, bad ones skipped (with the first few reasons)."""

    read: int
    skipped: int
    skip_reasons: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Parsers: raw dict -> CoTRecord.

_CALC = re.compile(r"<<[^<>]*>>")
_GSM8K_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_OPTION = re.compile(r"^\s*\(?([A-Za-z])\s*\)\s*(.*)$", re.S)
# AQuA rationales end with an answer line in many spellings ("Answer: C", "ANSWER:C",
# "The answer is B", "Correct answer is C", "Answer D", a bare "C"); it is the answer, not a step.
_AQUA_ANSWER_LINE = re.compile(
    r"^.{0,40}?\b(?:answer|ans|option|choice)\b[\s:.\-=]*(?:is|will be|should be|=)?"
    r"[\s:.\-=]*(?:option\s*)?\(?[A-E]\)?[\s.]*$|^\s*\(?[A-E]\)?\.?\s*$",
    re.I,
)


def strip_calculator(text: str) -> str:
    """Remove GSM8K calculator annotations: `48/2 = <<48/2=24>>24` -> `48/2 = 24`."""
    return _CALC.sub("", text)


def _field(raw: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in raw:
        raise RecordError(f"{where}: missing field {name!r} (has {sorted(raw)})")
    return raw[name]


def _text(raw: Mapping[str, Any], name: str, where: str) -> str:
    value = _field(raw, name, where)
    if isinstance(value, bytes):  # TFDS returns strings as bytes
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise RecordError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _checked(rec: CoTRecord, where: str) -> CoTRecord:
    if not rec.question.strip():
        raise BadRecord(f"{where}: empty question")
    if not rec.answer.strip():
        raise BadRecord(f"{where}: empty answer")
    return rec


def parse_gsm8k(raw: Mapping[str, Any], where: str, *, strip_calc: bool = True) -> CoTRecord:
    """GSM8K: `answer` is the steps, then `#### N`. The answer loses its thousands commas."""
    question = _text(raw, "question", where)
    full = _text(raw, "answer", where)
    if full.count("####") != 1:
        raise BadRecord(f"{where}: field 'answer' needs exactly one '####' before the final answer")
    chain_raw, answer = (s.strip() for s in full.split("####"))
    answer = answer.replace(",", "")
    if not _GSM8K_NUMBER.fullmatch(answer):
        # A record whose answer is not a number can never be scored correct.
        raise BadRecord(f"{where}: field 'answer' ends in '#### {answer[:40]}', not a number")
    chain = strip_calculator(chain_raw) if strip_calc else chain_raw
    rec = CoTRecord(question.strip(), chain, answer,
                    id=str(raw.get("id") or where), chain_raw=chain_raw)
    return _checked(rec, where)


def parse_options(items: Any, where: str) -> tuple[tuple[str, str], ...]:
    """Options as `["A)125", ...]`, `[["A", "125"], ...]` or `{"A": "125", ...}`."""
    if isinstance(items, Mapping):
        pairs = [(str(k), str(v)) for k, v in items.items()]
    elif isinstance(items, Sequence) and not isinstance(items, str):
        pairs = [_option_pair(it, where) for it in items]
    else:
        raise RecordError(f"{where}: field 'options' must be a list or a mapping")
    return tuple((k.strip().upper(), v.strip()) for k, v in pairs)


def _option_pair(item: Any, where: str) -> tuple[str, str]:
    if isinstance(item, bytes):
        item = item.decode("utf-8")
    if isinstance(item, str):
        m = _OPTION.match(item)
        if m is None:
            raise BadRecord(f"{where}: option {item!r} is not of the form 'A)text'")
        return m.group(1), m.group(2)
    if isinstance(item, Sequence) and len(item) == 2:
        return str(item[0]), str(item[1])
    raise RecordError(f"{where}: cannot read option {item!r}")


def strip_aqua_answer_line(rationale: str) -> str:
    """The rationale without its trailing answer line (if it has one)."""
    lines = rationale.strip().split("\n")
    if len(lines) > 1 and _AQUA_ANSWER_LINE.match(lines[-1].strip()):
        lines = lines[:-1]
    return "\n".join(lines).strip()


def parse_aqua(raw: Mapping[str, Any], where: str) -> CoTRecord:
    """AQuA-RAT: the chain is the rationale minus its answer line; the answer is the letter."""
    options = parse_options(_field(raw, "options", where), where)
    correct = _text(raw, "correct", where).strip().upper()
    if correct not in dict(options):
        raise BadRecord(f"{where}: field 'correct' = {correct!r} is not among the options "
                        f"{[k for k, _ in options]}")
    chain = strip_aqua_answer_line(_text(raw, "rationale", where))
    rec = CoTRecord(_text(raw, "question", where).strip(), chain, correct, options=options,
                    id=str(raw.get("id") or where), chain_raw=chain)
    return _checked(rec, where)


_THINK = re.compile(r"\s*<think>(.*?)</think>(.*)\Z", re.S)


def split_think(text: str, where: str) -> tuple[str, str] | None:
    """(reasoning, what follows) of a text that opens with a `<think>` block; None without one.
    An unclosed block is an error: a cut-off generation, not a record."""
    if "<think>" not in text:
        return None
    match = _THINK.match(text)
    if match is None:
        raise BadRecord(f"{where}: <think> without a closing </think> (or text before it)")
    return match.group(1).strip(), match.group(2).strip()


def parse_fields(raw: Mapping[str, Any], where: str, fields: FieldMap = FieldMap()) -> CoTRecord:
    """A generic record with configurable field names; `options` and `id` are optional. A chain
    holding a think block trains on the block."""
    chain = _text(raw, fields.chain, where).strip()
    think = split_think(chain, where)
    if think is not None:
        chain = think[0]
    options = parse_options(raw[fields.options], where) if raw.get(fields.options) else ()
    answer = _text(raw, fields.answer, where).strip()
    if options and answer.upper() not in dict(options):
        raise BadRecord(f"{where}: answer {answer!r} is not among the options")
    rec = CoTRecord(_text(raw, fields.question, where).strip(), chain,
                    answer.upper() if options else answer, options=options,
                    id=str(raw.get(fields.id) or where), chain_raw=chain)
    return _checked(rec, where)


def parse_messages(raw: Mapping[str, Any], where: str) -> CoTRecord:
    """A chat record: the last assistant turn answers the user turn before it (system turns and
    earlier turns are context the template does not carry). The chain is the assistant's think
    block, else its text before the final-answer statement; the answer is the record's `answer`
    field when it has one, else the strict answer after the think block (a number, else a
    letter A-E)."""
    messages = _field(raw, "messages", where)
    if not isinstance(messages, list) or not all(
            isinstance(m, Mapping) and isinstance(m.get("content"), str) and "role" in m
            for m in messages):
        raise RecordError(f"{where}: field 'messages' must be a list of "
                          "{{'role': ..., 'content': '...'}} dicts")
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise BadRecord(f"{where}: no assistant turn in 'messages' (roles {roles})")
    a = len(roles) - 1 - roles[::-1].index("assistant")
    users = [i for i in range(a) if roles[i] == "user"]
    if not users:
        raise BadRecord(f"{where}: no user turn before the last assistant turn")
    question, reply = messages[users[-1]]["content"].strip(), messages[a]["content"]
    think = split_think(reply, where)
    chain, rest = think if think is not None else (None, reply)
    answer = raw.get("answer")
    if answer is None:
        answer = (answers.extract_answer(rest, "gsm8k")
                  or answers.extract_answer(rest, "aqua"))
    if answer is None:
        raise BadRecord(f"{where}: no final answer in the assistant turn"
                        f"{' after </think>' if think else ''} (and no 'answer' field)")
    if chain is None:
        chain = answers.chain_before_answer(reply, "gsm8k") or answers.chain_before_answer(
            reply, "aqua") or ""
    rec = CoTRecord(question, chain, str(answer).strip(), id=str(raw.get("id") or where),
                    chain_raw=chain)
    return _checked(rec, where)


# ---------------------------------------------------------------------------------------------
# Sources: iterate (where, raw dict).

def resolve_path(path: str | Path) -> Path:
    """A data path as given, or else relative to the repository (so configs run from anywhere)."""
    path = Path(path)
    if path.is_file():
        return path
    in_repo = Path(__file__).resolve().parent.parent / path
    if not path.is_absolute() and in_repo.is_file():
        return in_repo
    raise RecordError(f"data file {path} does not exist")


def read_json_lines(path: str | Path, bad_lines: str = "raise"
                    ) -> Iterator[tuple[str, dict | BadRecord]]:
    """(`file:line`, object) per non-blank line of a JSONL file; a `.json` file holds a list.

    A line that is not UTF-8 or not a JSON object raises a BadRecord naming file:line; with
    `bad_lines="yield"` the BadRecord is yielded in the object's place instead, so a caller
    that skips bad records (`parse_all`) can count it and go on.
    """
    if bad_lines not in ("raise", "yield"):
        raise ValueError(f"bad_lines must be raise or yield, got {bad_lines!r}")
    real = resolve_path(path)
    if real.suffix == ".json":
        yield from _read_json_list(real, str(path))
        return
    with real.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"  # as the user wrote it: stable ids
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                row = _as_dict(_loads(line, where), where)
            except UnicodeDecodeError as e:
                row = BadRecord(f"{where}: not UTF-8 (byte {e.start + 1} of the line)")
            except BadRecord as e:
                row = e
            if isinstance(row, BadRecord) and bad_lines == "raise":
                raise row
            yield where, row


def _read_json_list(real: Path, shown: str) -> Iterator[tuple[str, dict]]:
    items = _loads(real.read_text(encoding="utf-8"), shown)
    if not isinstance(items, list):
        raise RecordError(f"{shown}: a .json data file must hold a list of records")
    for i, item in enumerate(items):
        yield f"{shown}[{i}]", _as_dict(item, f"{shown}[{i}]")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRecord(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None


def _as_dict(obj: Any, where: str) -> dict:
    if not isinstance(obj, dict):
        raise BadRecord(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_hf(name: str, config_name: str | None, split: str) -> Iterator[tuple[str, dict]]:
    """Rows of a Hugging Face `datasets` dataset (needs the optional `datasets` package)."""
    try:
        import datasets
    except ImportError as e:
        raise RecordError("data.source='hf' needs the `datasets` package: "
                          "pip install 'cotjax[hf]'") from e
    ds = datasets.load_dataset(name, config_name or None, split=split)
    for i, row in enumerate(ds):
        yield f"hf:{name}[{split}]#{i}", dict(row)


def read_tfds(name: str, split: str, data_dir: str | None = None) -> Iterator[tuple[str, dict]]:
    """Rows of a TFDS builder through `tfds.data_source` (random access, no TF graph)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise RecordError("data.source='tfds' needs `tensorflow-datasets`: "
                          "pip install 'cotjax[tfds]'") from e
    src = tfds.data_source(name, split=split, data_dir=data_dir or None)
    for i in range(len(src)):
        yield f"tfds:{name}[{split}]#{i}", dict(src[i])


# ---------------------------------------------------------------------------------------------
# Loading with the bad-record policy, and the held-out validation split.

def parse_all(rows: Iterable[tuple[str, dict]], parse: Callable[[dict, str], CoTRecord],
              on_bad_record: str = "error") -> tuple[list[CoTRecord], LoadReport]:
    """Parse every row; BadRecord raises or is skipped and counted per `on_bad_record`."""
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}")
    records, reasons, read = [], [], 0
    for where, raw in rows:
        read += 1
        try:
            if isinstance(raw, BadRecord):  # a line that could not be read (see read_json_lines)
                raise raw
            records.append(parse(raw, where))
        except BadRecord as e:
            if on_bad_record == "error":
                raise
            reasons.append(str(e))
    return records, LoadReport(read, len(reasons), tuple(reasons[:_MAX_REASONS]))


def _parser(fmt: str, data) -> Callable[[dict, str], CoTRecord]:
    if fmt == "gsm8k":
        return lambda raw, where: parse_gsm8k(raw, where, strip_calc=data.strip_calculator)
    if fmt == "aqua":
        return parse_aqua
    if fmt == "fields":
        fields = FieldMap(**dict(data.get("fields", {})))
        return lambda raw, where: parse_fields(raw, where, fields)
    if fmt == "messages":
        return parse_messages
    raise ValueError(f"data.format must be one of {FORMATS}, got {fmt!r}")


def _rows(data) -> Iterator[tuple[str, dict]]:
    if data.source in ("gsm8k", "aqua", "jsonl"):
        return read_json_lines(data.path, bad_lines="yield")
    if data.source == "hf":
        return read_hf(data.hf_name, data.hf_config, data.hf_split)
    if data.source == "tfds":
        return read_tfds(data.tfds_name, data.tfds_split, data.tfds_data_dir)
    raise ValueError(f"data.source must be one of {SOURCES}, got {data.source!r}")


def _synthetic(data) -> tuple[list[CoTRecord], LoadReport]:
    rows = synthetic.generate_rows(data.synthetic_n, data.synthetic_min_steps,
                                   data.synthetic_max_steps, data.synthetic_seed)
    records = [CoTRecord(question=r["question"], chain=r["chain"], answer=r["answer"],
                         id=r["id"], chain_raw=r["chain"]) for r in rows]
    return records, LoadReport(len(records), 0)


def load_pool(data) -> tuple[list[CoTRecord], LoadReport]:
    """All records of a config's `data` section, before the validation hold-out."""
    if data.source == "synthetic":
        records, report = _synthetic(data)
    else:
        fmt = data.source if data.source in ("gsm8k", "aqua") else data.format
        records, report = parse_all(_rows(data), _parser(fmt, data), data.on_bad_record)
    if not records:
        raise RecordError(f"data source {data.source!r} ({data.get('path', '')}) gave no records "
                          f"({report.read} read, {report.skipped} skipped)")
    return records, report


def validation_split(records: Sequence[CoTRecord], size: int, seed: int
                     ) -> tuple[list[CoTRecord], list[CoTRecord]]:
    """(train, validation): `size` records chosen by a seeded, content-keyed permutation.

    The key is sha256(seed, question, index-among-equal-questions), so the choice depends only
    on the seed and the records themselves; both parts keep the file order.
    """
    if not 0 <= size < len(records):
        raise ValueError(f"data.validation_size={size} must be in [0, {len(records)})")
    seen: dict[str, int] = {}
    keys = []
    for i, rec in enumerate(records):
        dup = seen[rec.question] = seen.get(rec.question, -1) + 1
        digest = hashlib.sha256(f"{seed}\0{rec.question}\0{dup}".encode()).digest()
        keys.append((digest, i))
    held = {i for _, i in sorted(keys)[:size]}
    train = [r for i, r in enumerate(records) if i not in held]
    return train, [r for i, r in enumerate(records) if i in held]


def _train_file(path: str, validation: Sequence[CoTRecord], on_bad_record: str
                ) -> tuple[list[CoTRecord], LoadReport]:
    """data.train_path's records (field names question/chain/answer/id), minus any whose
    question is in the validation slice: training on it would inflate every score."""
    records, report = parse_all(read_json_lines(path, bad_lines="yield"), parse_fields,
                                on_bad_record)
    held = {r.question for r in validation}
    kept = [r for r in records if r.question not in held]
    if len(kept) < len(records):
        print(f"{path}: dropped {len(records) - len(kept)} of {len(records)} records whose "
              f"question is in the validation slice")
    return kept, report


def load_records(data, split: str = "train") -> tuple[list[CoTRecord], LoadReport]:
    """The records of one split of a config's `data` section (train excludes validation)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pool, report = load_pool(data)
    train, validation = validation_split(pool, data.validation_size, data.validation_seed)
    if split == "train" and data.get("train_path"):
        train, report = _train_file(data.train_path, validation, data.on_bad_record)
    records = train if split == "train" else validation
    if split == "train" and data.max_examples >= 0:
        records = records[:data.max_examples]
    if not records:
        raise RecordError(f"split {split!r} of data source {data.source!r} is empty")
    return records, report
