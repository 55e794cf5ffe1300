"""`cotjax distill`: verified chains from sample directories (cotjax sample) as training records.

samples (one or more OUT dirs of `cotjax sample`, any teacher, any tokenizer: selection works on
text) -> filters -> reasoning paths -> at most M distinct paths per problem (+ the human chains)
-> a JSONL of CoT records (`question`, `chain`, `answer` and provenance) that `cotjax train` reads
as `data.train_path` (configs/gsm8k.py:train=FILE), and OUT.funnel.json.

Filters, each switchable (`filters`), applied in this order and counted in the funnel:
  correct     the strict answer equals the gold answer
  steps_valid every arithmetic claim holds (cotjax.steps; an unparsed overlong text fails)
  consistent  the answer is the value the last claim states (no claim contradicts the answer)
  finished    the chain ended by itself (EOS or a stop string), not at the length limit

A chain's reasoning path is its sequence of claims as written, each normalised (`expr=value`
with the claimed value; spaces,
`$`, thousands commas and the spelling of x / * / unicode operators removed); chains without
claims fall back to their whitespace-normalised text. Of the distinct paths of a problem the
first M by sample index are kept (samples are i.i.d., so this is a uniform choice), the path of
the problem's human chain counting as already taken when `human` adds those.

What is trained on: the sample's text before its final-answer statement (scoring.
chain_before_answer) as the chain and the gold answer, formatted by the training template like
any record, so a run-on after the answer or a teacher's answer phrasing never reaches the target.
Hinted samples (STaR rationalisation) keep the question without the hint.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from collections.abc import Sequence

from cotjax import paths
from cotjax import records as records_lib
from cotjax.records import CoTRecord
from cotjax.report import read_sample_dirs
from cotjax.answers import chain_before_answer
from cotjax.steps import check_steps

FILTERS = ("correct", "steps_valid", "consistent", "finished")
_OPS = str.maketrans({"x": "*", "X": "*", "×": "*", "÷": "/", "−": "-"})


def _passes(row: dict, name: str) -> bool:
    if name == "correct":
        return bool(row["correct"])
    if name == "steps_valid":
        return bool(row["all_steps_valid"]) and row.get("steps_checked", True)
    if name == "consistent":
        return not row["answer_differs_from_last_step"]
    return row["finish"] != "length"


def path_of_steps(steps: Sequence[dict]) -> tuple[str, ...]:
    """The normalised `expr=value` claims of a step report (dicts of scoring's `steps`)."""
    out = []
    for s in steps:
        expr = re.sub(r"[\s$,]", "", s["expression"]).translate(_OPS)
        out.append(f"{expr}={s.get('claimed_value') or s['claimed']}")  # as written
    return tuple(out)


def reasoning_path(chain: str) -> tuple[str, ...]:
    """A chain's reasoning path: its claims, or its normalised text when it makes none."""
    path = path_of_steps([dataclasses.asdict(s) for s in check_steps(chain).steps])
    return path or ("text:" + " ".join(chain.lower().split()),)


def select(rows: Sequence[dict], *, filters: Sequence[str] = FILTERS, max_per_problem: int = 4,
           human: Sequence[CoTRecord] = (), task: str = "gsm8k") -> tuple[list[dict], dict]:
    """(training records, funnel) from sample lines. `human`: records whose chains join the
    output (each counts as its problem's first path)."""
    unknown = [f for f in filters if f not in FILTERS]
    if unknown:
        raise ValueError(f"unknown filter {unknown[0]!r}; filters: {', '.join(FILTERS)}")
    if max_per_problem < 1:
        raise ValueError(f"--max_per_problem must be >= 1, got {max_per_problem}")
    funnel = collections.OrderedDict(sampled=len(rows))
    kept_rows = list(rows)
    for name in FILTERS:
        if name in filters:
            kept_rows = [r for r in kept_rows if _passes(r, name)]
            funnel[name] = len(kept_rows)
    no_statement = 0
    by_question: dict[str, list[tuple[dict, str]]] = collections.defaultdict(list)
    for r in sorted(kept_rows, key=lambda r: (r["question"], r["sample"], r.get("model", ""))):
        chain = chain_before_answer(r["generation"], task)
        if chain is None:  # possible only with `correct` off: no answer statement to cut at
            no_statement += 1
            continue
        by_question[r["question"]].append((r, chain))
    funnel["with_answer_statement"] = funnel[next(reversed(funnel))] - no_statement

    out, problems = [], {}
    human_by_q = {h.question: h for h in human}
    for q, h in human_by_q.items():
        out.append({"question": q, "chain": h.chain, "answer": h.answer, "id": h.id,
                    "source": "human"})
    distinct_total = 0
    questions = {r["question"]: r for r in rows}
    sampled = collections.Counter(r["question"] for r in rows)
    for q in sorted(questions):
        taken = set()
        if q in human_by_q:
            h = human_by_q[q]
            taken.add(reasoning_path(h.chain_raw or h.chain))
        kept = 0
        paths_seen = set()
        for r, chain in by_question.get(q, []):
            path = reasoning_path(chain)
            paths_seen.add(path)
            if path in taken or kept >= max_per_problem:
                continue
            taken.add(path)
            kept += 1
            out.append({"question": q, "chain": chain, "answer": r["gold"], "id": r["id"],
                        "source": "sampled", "model": r.get("model"), "problem": r["problem"],
                        "sample": r["sample"], "logprob": r.get("logprob"),
                        "hint": r.get("hint", False), "path": list(path)})
        distinct_total += len(paths_seen)
        first = questions[q]
        problems[str(first["id"] or first["problem"])] = {
            "sampled": sampled[q], "passed": len(by_question.get(q, [])), "distinct": len(paths_seen), "kept": kept}
    funnel["distinct"] = distinct_total
    funnel["kept"] = sum(p["kept"] for p in problems.values())
    n = len(problems)
    summary = {
        "funnel": dict(funnel), "filters": list(filters), "max_per_problem": max_per_problem,
        "problems": n,
        "problems_with_kept_chain": sum(p["kept"] > 0 for p in problems.values()),
        "kept_per_problem": round(funnel["kept"] / n, 3) if n else 0.0,
        "human_records": len(human_by_q), "records_written": len(out),
        "per_problem": problems,
    }
    return out, summary


def funnel_text(summary: dict) -> str:
    f = summary["funnel"]
    lines = [" -> ".join(f"{k} {v}" for k, v in f.items()),
             f"problems {summary['problems']}, with a kept chain "
             f"{summary['problems_with_kept_chain']}, kept per problem "
             f"{summary['kept_per_problem']}; human records {summary['human_records']}; "
             f"records written {summary['records_written']}"]
    return "\n".join(lines)


def unsolved(rows: Sequence[dict], summary: dict) -> list[dict]:
    """The sampled problems without a kept chain, as raw GSM8K lines (question, `#### gold`):
    what STaR's rationalisation pass samples again with the answer as a hint."""
    firsts = {}
    for r in rows:
        firsts.setdefault(r["question"], r)
    return [{"question": q, "answer": f"#### {r['gold']}", "id": r["id"]}
            for q, r in sorted(firsts.items())
            if summary["per_problem"][str(r["id"] or r["problem"])]["kept"] == 0]


def matched_control(records: Sequence[dict]) -> list[dict]:
    """The count-matched control of a distilled file: the human records, and for each kept
    sampled chain a copy of its problem's human record instead. The same records per problem,
    so about the same steps (packing decides: chains of other lengths pack differently): a
    student that beats this control gains from the teacher's chains, not from more updates on
    the problems the teacher solved."""
    human = {r["question"]: r for r in records if r["source"] == "human"}
    if not human:
        raise ValueError("--control needs --human (the human chains that replace the kept ones)")
    out = list(human.values())
    for r in records:
        if r["source"] == "human":
            continue
        if r["question"] not in human:
            raise ValueError(f"--control: kept chain of problem {r['id']!r} (sample "
                             f"{r.get('sample')}) has no human record to stand in for it")
        out.append({**human[r["question"]], "source": "human_copy", "replaces_sample": r.get("sample")})
    return out


def _jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def write(out: str, records: Sequence[dict], summary: dict, rest: Sequence[dict] = ()) -> None:
    """OUT (the records), OUT.funnel.json and OUT.unsolved.jsonl (see `unsolved`)."""
    paths.write_text(out, _jsonl(records))
    paths.write_text(str(out) + ".funnel.json", json.dumps(summary, indent=1) + "\n")
    paths.write_text(str(out) + ".unsolved.jsonl", _jsonl(rest))


def load_human(data: str, config) -> list[CoTRecord]:
    """The human chains to add: 'train' (the config's training split) or a raw GSM8K file."""
    if data == "train":
        if config is None:
            raise ValueError("--human=train needs --config=PATH (whose data gives the split)")
        return records_lib.load_records(config.data, "train")[0]
    recs, report = records_lib.parse_all(records_lib.read_json_lines(data, bad_lines="yield"),
                                         records_lib.parse_gsm8k)
    if not recs:
        raise ValueError(f"{data}: no records")
    return recs


def main(flags, dirs: Sequence[str]) -> dict:
    """`cotjax distill SAMPLE_DIR ... --out=FILE [--filters=a,b] [--max_per_problem=M]
    [--human=train|FILE --config=C [--control]] [--first_samples=N] [--max_problems=P]`."""
    if not dirs:
        raise ValueError("give one or more sample directories (cotjax sample --out)")
    if flags.control and not flags.human:
        raise ValueError("--control needs --human (the human chains that replace the kept ones)")
    rows = read_sample_dirs(dirs)
    # Sub-runs from one sampling run: a smaller K (first_samples) or a smaller problem set
    # (max_problems, e.g. a CPU student trained on the teacher's first P problems).
    for flag, field in (("first_samples", "sample"), ("max_problems", "problem")):
        limit = getattr(flags, flag)
        if limit == -1:
            continue
        if limit < 1:
            raise ValueError(f"--{flag} must be >= 1 (or -1: all), got {limit}")
        if field == "problem" and any(r.get("hint") for r in rows):
            # a --hint run numbers its problems within the unsolved file, not the split
            raise ValueError("--max_problems counts problems of the split; a --hint sample "
                             "directory numbers them within its unsolved file: give the plain "
                             "sample directories only")
        n = len(rows)
        rows = [r for r in rows if r[field] < limit]
        print(f"--{flag}={limit}: {len(rows)} of {n} sample lines used")
    filters = [f for f in flags.filters.split(",") if f] if flags.filters != "none" else []
    human = load_human(flags.human, flags.config) if flags.human else ()
    records, summary = select(rows, filters=filters, max_per_problem=flags.max_per_problem,
                              human=human, task=flags.task or "gsm8k")
    summary["sources"] = [str(d) for d in dirs]
    rest = unsolved(rows, summary) if (flags.task or "gsm8k") == "gsm8k" else []
    control = matched_control(records) if flags.control else None  # refused before any write
    write(flags.out, records, summary, rest)
    print(funnel_text(summary))
    print(f"wrote {flags.out}, {flags.out}.funnel.json and {flags.out}.unsolved.jsonl "
          f"({len(rest)} problems without a kept chain)")
    if control is not None:
        paths.write_text(f"{flags.out}.control.jsonl", _jsonl(control))
        print(f"wrote {flags.out}.control.jsonl ({len(control)} records: each kept chain "
              f"replaced by its problem's human chain)")
    return summary
