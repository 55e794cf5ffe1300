"""The figures README.md and docs/ quote from committed result files match those files.

`tests/test_results.py` holds the committed predictions and summaries to the current scoring
rules; this file holds the prose and tables to the files. Two lists, each entry written out by
hand so that a wrong number in a doc, or a rescoring that moves a file, fails here:

- PAIRED: every paired comparison the docs quote, recomputed with `report.paired_from_files`;
  its counts and McNemar p-value, written the way that doc writes them, must equal the quoted
  text, and the doc must contain that text.
- ACCURACIES (and STEP_ROWS): every accuracy with its Wilson 95% interval quoted in the results
  tables (and the prose that repeats one), formatted as the docs print them,
  `0.084 (42) [0.063, 0.112]`, must be in the doc (in its table row where a row is named).

When a scoring rule changes: `cotjax report rescore results`, then update the docs and these
lists together.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from decimal import ROUND_HALF_UP, Decimal

import pytest

from cotjax.report import paired_from_files
from cotjax.scoring import wilson_interval

ROOT = pathlib.Path(__file__).resolve().parents[1]
G, S = "results/gsm8k", "results/gsm8k/sweep"
README, EVALUATE = "README.md", "docs/evaluate.md"
SMOL, GEMMA = "docs/experiments/gsm8k_smollm2.md", "docs/experiments/gsm8k_gemma3.md"
SYNTH = "docs/experiments/synthetic.md"


def _round(x: float, places: int) -> str:
    """Half up, from the decimal the JSON holds (0.0295 -> 0.030, where float formatting gives
    0.029)."""
    return str(Decimal(str(x)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def format_p(p: float) -> str:
    """McNemar's p as the docs write it: two significant digits from 0.01 up (0.065, 0.27),
    one below (0.005, 7e-4, 1e-6)."""
    if p >= 0.01:
        return f"{p:.{1 - math.floor(math.log10(p))}f}"
    if p >= 0.001:
        return f"{p:.3f}"
    mantissa, exponent = f"{p:.0e}".split("e")
    return f"{mantissa}e-{int(exponent[1:])}"


def format_accuracy(summary: dict, key: str) -> str:
    """`accuracy (right answers) [lo, hi]`, 3 decimals. Summaries written before the intervals
    existed (the synthetic experiment's) get Wilson's interval from their counts."""
    count = summary[key.replace("accuracy", "correct")]
    lo, hi = summary.get(f"{key}_ci95") or wilson_interval(count, summary["n"])
    return f"{_round(summary[key], 3)} ({count}) [{_round(lo, 3)}, {_round(hi, 3)}]"


def summary(name: str) -> dict:
    return json.loads((ROOT / f"{name}_summary.json").read_text())


def doc_text(doc: str) -> str:
    """The doc with bold marks dropped and whitespace runs (line wraps) made single spaces."""
    return re.sub(r"\s+", " ", (ROOT / doc).read_text().replace("**", ""))


def doc_row(doc: str, marker: str) -> str:
    """The one line of the doc (a table row) that contains `marker`, bold marks dropped."""
    lines = [line for line in (ROOT / doc).read_text().splitlines() if marker in line]
    assert len(lines) == 1, f"{doc}: {len(lines)} lines contain {marker!r}, want 1"
    return lines[0].replace("**", "")


# (doc, A, B, field_a, field_b, how the doc writes it, the text the doc quotes). A and B are
# predictions files without `_predictions.jsonl`; the template's fields are those of
# `paired_from_files` (correct_a, correct_b, only_a, only_b, both, ...) and p.
def _table(label: str) -> str:
    return f"| {label} | {{correct_b}} | {{only_a}} | {{only_b}} | {{p}} |"


EP2, EP1 = f"{S}/cot_lr2e-4_ep2", f"{S}/cot_lr2e-4_ep1"
MAJ_EP2, MAJ_5E5 = f"{G}/cot_lr2e-4_ep2_maj8", f"{G}/cot_maj8"
STRICT, FLEX = ("maj_correct", "correct"), ("maj_correct_flexible", "correct_flexible")
PAIRED = [
    # experiment 2 (SmolLM2): one pass at lr 2e-4 against the 8-shot base model
    (SMOL, EP1, f"{G}/base_8shot", "correct", "correct",
     "{correct_a} (lr 2e-4; paired against 8-shot {only_a} questions against {only_b}, p = {p})",
     "26 (lr 2e-4; paired against 8-shot 24 questions against 12, p = 0.065)"),
    # the table: the chosen model (2 epochs at lr 2e-4) against every other greedy row
    (SMOL, EP2, EP1, "correct", "correct", _table("CoT, one pass at lr 2e-4"),
     "| CoT, one pass at lr 2e-4 | 26 | 30 | 14 | 0.023 |"),
    (SMOL, EP2, f"{S}/answer_only_lr2e-4_ep2", "correct", "correct",
     _table("answer-only, 2 epochs at lr 2e-4"),
     "| answer-only, 2 epochs at lr 2e-4 | 20 | 39 | 17 | 0.005 |"),
    (SMOL, EP2, f"{S}/answer_only_lr2e-4_ep1", "correct", "correct",
     _table("answer-only, one pass at lr 2e-4"),
     "| answer-only, one pass at lr 2e-4 | 17 | 40 | 15 | 0.001 |"),
    (SMOL, EP2, f"{G}/answer_only", "correct", "correct",
     _table("answer-only, one pass at lr 5e-5"),
     "| answer-only, one pass at lr 5e-5 | 16 | 41 | 15 | 7e-4 |"),
    (SMOL, EP2, f"{G}/base_8shot", "correct", "correct", _table("base, 8-shot CoT"),
     "| base, 8-shot CoT | 14 | 41 | 13 | 2e-4 |"),
    (SMOL, EP2, f"{G}/cot", "correct", "correct", _table("CoT, one pass at lr 5e-5"),
     "| CoT, one pass at lr 5e-5 | 13 | 38 | 9 | 2e-5 |"),
    (SMOL, EP2, f"{G}/base_zero_shot", "correct", "correct", _table("base, zero-shot CoT"),
     "| base, zero-shot CoT | 8 | 42 | 8 | 1e-6 |"),
    # the chosen model's maj@8 vote, under each rule (the counts agree for this run)
    *[(SMOL, MAJ_EP2, EP2, *fields,
       "its vote's {correct_a} against its own greedy {correct_b} is {only_a} questions against "
       "{only_b}, p = {p}",
       "its vote's 51 against its own greedy 42 is 31 questions against 22, p = 0.27")
      for fields in (STRICT, FLEX)],
    *[(SMOL, MAJ_EP2, f"{S}/answer_only_lr2e-4_ep2", *fields,
       "answer-only at the same schedule ({correct_b}) it is {only_a} against {only_b}, p = {p}",
       "answer-only at the same schedule (20) it is 49 against 18, p = 2e-4")
      for fields in (STRICT, FLEX)],
    *[(SMOL, MAJ_EP2, f"{G}/base_8shot", *fields,
       "the 8-shot base model ({correct_b}) {only_a} against {only_b}, p = {p}",
       "the 8-shot base model (14) 50 against 13, p = 3e-6")
      for fields in (STRICT, FLEX)],
    *[(SMOL, MAJ_EP2, EP2, *fields,
       "from 0.084 to 0.102 ({correct_a}) [0.078, 0.132] under both rules (p = {p}",
       "from 0.084 to 0.102 (51) [0.078, 0.132] under both rules (p = 0.27")
      for fields in (STRICT, FLEX)],
    # the lr 5e-5 model's vote against its greedy answers: significant only flexibly
    (SMOL, MAJ_5E5, f"{G}/cot", *STRICT,
     "{correct_a} against {correct_b} is {only_a} questions against {only_b}, p = {p}",
     "24 against 13 is 20 questions against 9, p = 0.061"),
    (SMOL, MAJ_5E5, f"{G}/cot", *FLEX,
     "{correct_a} against {correct_b}, it is {only_a} questions against {only_b}, p = {p}",
     "27 against 14, it is 23 questions against 10, p = 0.035"),
    (SMOL, MAJ_5E5, f"{G}/cot", *STRICT,
     "from {correct_b} to {correct_a} strict answers, 0.048 ({correct_a}) [0.032, 0.070] "
     "(p = {p}",
     "from 13 to 24 strict answers, 0.048 (24) [0.032, 0.070] (p = 0.061"),
    (SMOL, MAJ_5E5, f"{G}/cot", *FLEX,
     "from {correct_b} to {correct_a} flexible ones, 0.054 ({correct_a}) [0.037, 0.077] "
     "(p = {p}",
     "from 14 to 27 flexible ones, 0.054 (27) [0.037, 0.077] (p = 0.035"),
    # the chosen model's vote against the lr 5e-5 model's, each rule on both sides
    (SMOL, MAJ_EP2, MAJ_5E5, "maj_correct", "maj_correct",
     "strictly {correct_a} against {correct_b}, {only_a} questions against {only_b}, p = {p}",
     "strictly 51 against 24, 43 questions against 16, p = 6e-4"),
    (SMOL, MAJ_EP2, MAJ_5E5, "maj_correct_flexible", "maj_correct_flexible",
     "flexibly {correct_a} against {correct_b}, {only_a} questions against {only_b}, p = {p}",
     "flexibly 51 against 27, 42 questions against 18, p = 0.003"),
    # CoT against answer-only at the same schedule, 2 epochs and one pass
    (SMOL, EP2, f"{S}/answer_only_lr2e-4_ep2", "correct", "correct",
     "{correct_a} against {correct_b} ({only_a} questions against {only_b}, p = {p})",
     "42 against 20 (39 questions against 17, p = 0.005)"),
    (SMOL, EP1, f"{S}/answer_only_lr2e-4_ep1", "correct", "correct",
     "({correct_a} against {correct_b}: {only_a} questions against {only_b}, p = {p})",
     "(26 against 17: 25 questions against 16, p = 0.21)"),
    # the sweep's bullets
    (SMOL, EP2, EP1, "correct", "correct",
     "Paired against one pass: {only_a} questions only the 2-epoch model gets right, {only_b} "
     "the reverse, p = {p}",
     "Paired against one pass: 30 questions only the 2-epoch model gets right, 14 the reverse, "
     "p = 0.023"),
    (SMOL, EP2, f"{S}/answer_only_lr2e-4_ep2", "correct", "correct",
     "({correct_a} right): {only_a} questions only CoT gets right, {only_b} only answer-only, "
     "McNemar p = {p}",
     "(42 right): 39 questions only CoT gets right, 17 only answer-only, McNemar p = 0.005"),
    # experiment 3 (Gemma)
    (GEMMA, EP2, f"{G}/gemma3_cot", "correct", "correct",
     "those {correct_a} against Gemma's {correct_b}: {only_a} questions against {only_b}, "
     "p = {p}",
     "those 42 against Gemma's 34: 34 questions against 26, p = 0.37"),
    (GEMMA, f"{G}/gemma3_cot", f"{G}/gemma3_base_zero_shot", "correct_flexible",
     "correct_flexible",
     "right on {only_a} questions the base model misses and the reverse happens on {only_b} "
     "(McNemar p = {p}",
     "right on 32 questions the base model misses and the reverse happens on 7 "
     "(McNemar p = 7e-5"),
    (GEMMA, f"{G}/gemma3_cot", f"{G}/gemma3_answer_only", "correct", "correct",
     "{only_a} questions only the CoT model gets right, {only_b} the reverse, McNemar p = {p}",
     "31 questions only the CoT model gets right, 11 the reverse, McNemar p = 0.003"),
    (GEMMA, f"{G}/gemma3_answer_only", f"{G}/gemma3_base_zero_shot", "correct_flexible",
     "correct_flexible",
     "share no question ({correct_a} against {correct_b}, p = {p})",
     "share no question (14 against 9, p = 0.40)"),
    # README: CoT against answer-only, SmolLM2 (same schedule) and Gemma
    (README, EP2, f"{S}/answer_only_lr2e-4_ep2", "correct", "correct",
     "{only_a} questions only CoT gets right against {only_b}, p = {p} (SmolLM2)",
     "39 questions only CoT gets right against 17, p = 0.005 (SmolLM2)"),
    (README, f"{G}/gemma3_cot", f"{G}/gemma3_answer_only", "correct", "correct",
     "{only_a} against {only_b}, p = {p} (Gemma)",
     "31 against 11, p = 0.003 (Gemma)"),
    # evaluate.md's example: the chosen model's vote against its greedy answers, each rule
    *[(EVALUATE, MAJ_EP2, EP2, *fields,
       "({correct_a} against {correct_b}: {only_a} questions against {only_b}, p = {p};",
       "(51 against 42: 31 questions against 22, p = 0.27;")
      for fields in (STRICT, FLEX)],
]


@pytest.mark.parametrize("doc,a,b,field_a,field_b,template,quoted", PAIRED,
                         ids=[f"{e[0]}:{e[6][:48]}" for e in PAIRED])
def test_paired_comparison_quoted_in_docs_recomputes(doc, a, b, field_a, field_b, template,
                                                     quoted):
    result = paired_from_files(ROOT / f"{a}_predictions.jsonl", ROOT / f"{b}_predictions.jsonl",
                               field_a, field_b)
    computed = template.format(**result, p=format_p(result["mcnemar_p"]))
    assert computed == quoted, (
        f"{doc} quotes {quoted!r}; `cotjax report paired {a}_predictions.jsonl "
        f"{b}_predictions.jsonl {field_a} {field_b}` gives {computed!r} ({result})")
    assert quoted in doc_text(doc), f"{doc} no longer contains {quoted!r}"


# (doc, the table row it is in (a marker unique to that line) or None for prose, summary, key)
_SMOL_ROWS = {
    "CoT fine-tuned, one pass at lr 5e-5 |": f"{G}/cot",
    "CoT fine-tuned, one pass at lr 2e-4 |": EP1,
    "CoT fine-tuned, 2 epochs at lr 2e-4 (the sweep's choice": EP2,
    "answer-only fine-tuned, one pass at lr 5e-5 |": f"{G}/answer_only",
    "answer-only fine-tuned, one pass at lr 2e-4 (the CoT row's rate)":
        f"{S}/answer_only_lr2e-4_ep1",
    "answer-only fine-tuned, 2 epochs at lr 2e-4 (the CoT choice's schedule)":
        f"{S}/answer_only_lr2e-4_ep2",
    "| base, zero-shot CoT (\"Let's think": f"{G}/base_zero_shot",
    "| base, 8-shot CoT (8 seeded": f"{G}/base_8shot",
}
_GEMMA_ROWS = {
    "| CoT fine-tuned, one pass |": f"{G}/gemma3_cot",
    "| answer-only fine-tuned, one pass |": f"{G}/gemma3_answer_only",
    "| base, zero-shot CoT (\"Let's think": f"{G}/gemma3_base_zero_shot",
}
ACCURACIES = [
    *[(SMOL, row, name, key) for row, name in _SMOL_ROWS.items()
      for key in ("accuracy", "accuracy_flexible")],
    *[(SMOL, "CoT fine-tuned (lr 5e-5), maj@8", MAJ_5E5, key)
      for key in ("maj_accuracy", "maj_accuracy_flexible")],
    *[(SMOL, "CoT fine-tuned, 2 epochs at lr 2e-4, maj@8", MAJ_EP2, key)
      for key in ("maj_accuracy", "maj_accuracy_flexible")],
    (SMOL, None, MAJ_5E5, "sample_accuracy"),
    (SMOL, None, MAJ_5E5, "sample_accuracy_flexible"),
    (SMOL, None, MAJ_EP2, "sample_accuracy"),
    (SMOL, None, MAJ_EP2, "sample_accuracy_flexible"),
    (SMOL, None, MAJ_5E5, "maj_accuracy"),
    (SMOL, None, MAJ_5E5, "maj_accuracy_flexible"),
    (SMOL, None, EP1, "accuracy"),
    (SMOL, None, EP1, "accuracy_flexible"),
    (SMOL, None, EP2, "accuracy"),
    (SMOL, None, f"{S}/answer_only_lr2e-4_ep1", "accuracy"),
    (SMOL, None, f"{S}/answer_only_lr2e-4_ep2", "accuracy"),
    *[(GEMMA, row, name, key) for row, name in _GEMMA_ROWS.items()
      for key in ("accuracy", "accuracy_flexible")],
    (SYNTH, "| CoT fine-tuned |", "results/synthetic/cot", "accuracy"),
    (SYNTH, "| answer-only fine-tuned |", "results/synthetic/answer_only", "accuracy"),
    (SYNTH, "| base, zero-shot CoT |", "results/synthetic/base", "accuracy"),
    (README, "| GSM8K, SmolLM2-135M-Instruct", EP2, "accuracy"),
    (README, "| GSM8K, SmolLM2-135M-Instruct", f"{S}/answer_only_lr2e-4_ep2", "accuracy"),
    (README, "| GSM8K, SmolLM2-135M-Instruct", f"{G}/base_8shot", "accuracy"),
    (README, "| GSM8K, Gemma 3 270M", f"{G}/gemma3_cot", "accuracy"),
    (README, "| GSM8K, Gemma 3 270M", f"{G}/gemma3_answer_only", "accuracy"),
    (README, "| GSM8K, Gemma 3 270M", f"{G}/gemma3_base_zero_shot", "accuracy"),
    (README, "| synthetic arithmetic", "results/synthetic/cot", "accuracy"),
    (README, "| synthetic arithmetic", "results/synthetic/answer_only", "accuracy"),
    (README, "| synthetic arithmetic", "results/synthetic/base", "accuracy"),
]


@pytest.mark.parametrize("doc,row,name,key", ACCURACIES,
                         ids=[f"{d}:{n.split('/')[-1]}:{k}" for d, _, n, k in ACCURACIES])
def test_accuracy_quoted_in_docs_matches_its_summary(doc, row, name, key):
    shown = format_accuracy(summary(name), key)
    where = doc_row(doc, row) if row else doc_text(doc)
    assert shown in where, (f"{doc}: {name}_summary.json's {key} is {shown!r}, not found "
                            f"{'in the row ' + repr(row) if row else 'in the text'}")


def step_cells(s: dict) -> str:
    """A GSM8K table row's step columns: steps valid, truncated, chains all valid, correct
    through an invalid step, answer differs from the last computed value, hit the length cap."""
    return (f"| {s['steps_valid']} / {s['steps_total']} ({_round(s['step_validity'], 2)}) "
            f"| {s['steps_truncated']} | {s['chains_all_steps_valid_count']} of {s['n']} "
            f"| {s['correct_with_invalid_step']} | {s['answer_differs_from_last_step']} "
            f"| {s['finished_length']} |")


STEP_ROWS = [
    *[(SMOL, row, name) for row, name in _SMOL_ROWS.items() if "answer-only" not in row],
    (GEMMA, "| CoT fine-tuned, one pass |", f"{G}/gemma3_cot"),
    (GEMMA, "| base, zero-shot CoT (\"Let's think", f"{G}/gemma3_base_zero_shot"),
]


@pytest.mark.parametrize("doc,row,name", STEP_ROWS,
                         ids=[f"{d}:{n.split('/')[-1]}" for d, _, n in STEP_ROWS])
def test_step_figures_in_tables_match_their_summary(doc, row, name):
    cells = step_cells(summary(name))
    assert cells in doc_row(doc, row), f"{doc}: the row {row!r} should hold {cells!r}"


def test_synthetic_step_figures_match_their_old_summaries():
    # Not rescorable (no committed predictions): the page keeps the old checker's figures.
    for row, name in (("| CoT fine-tuned |", "cot"), ("| base, zero-shot CoT |", "base")):
        s = summary(f"results/synthetic/{name}")
        cells = (f"| {s['steps_valid']} / {s['steps_total']} ({_round(s['step_validity'], 2)}) "
                 f"| {s['chains_all_steps_valid_count']} of {s['n']} |")
        assert cells in doc_row(SYNTH, row), f"{SYNTH}: the row {row!r} should hold {cells!r}"


def test_format_p_examples():
    assert [format_p(p) for p in (0.4049, 0.27168, 0.0652, 0.0614, 0.00456, 0.00102, 6.86e-4,
                                  2.49e-5, 1.16e-6)] == [
        "0.40", "0.27", "0.065", "0.061", "0.005", "0.001", "7e-4", "2e-5", "1e-6"]
