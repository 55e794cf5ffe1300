"""Reports of scored runs: prediction files, summaries as tables, paired tests, rescoring.

Pure Python, no JAX.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Iterable, Sequence

from cotjax import paths
from cotjax.records import RecordError, read_json_lines
from cotjax.scoring import score_prediction, score_samples, summarize
from cotjax.synthetic import steps_in_question


def format_table(summary: dict) -> str:
    """The summary as an aligned two-column console table."""
    width = max(len(key) for key in summary)
    lines = []
    for key, value in summary.items():
        if isinstance(value, float):
            shown = f"{value:.4f}"
        elif isinstance(value, list) and all(isinstance(v, float) for v in value):
            shown = "[" + ", ".join(f"{v:.4f}" for v in value) + "]"  # an interval
        else:
            shown = str(value)
        lines.append(f"{key:<{width}}  {shown:>10}")
    return "\n".join(lines)


def predictions_text(rows: Iterable[dict]) -> str:
    """predictions.jsonl's text: one JSON object per line."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def summary_text(summary: dict) -> str:
    return json.dumps(summary, indent=2, ensure_ascii=False) + "\n"


def write_report(out_dir, rows: Iterable[dict], summary: dict):
    """Writes `predictions.jsonl` (one line per question) and `summary.json` into `out_dir`
    (a local path or a URL such as gs://...); returns their two paths."""
    out = paths.path(out_dir)
    predictions, summary_path = out / "predictions.jsonl", out / "summary.json"
    paths.write_text(predictions, predictions_text(rows))
    paths.write_text(summary_path, summary_text(summary))
    return predictions, summary_path


def read_correct(path: str | pathlib.Path, field: str = "correct") -> dict[str, bool]:
    """{question id: whether it was answered correctly} from a run's predictions.jsonl, or from
    a `cotjax sample` directory: whether any of the problem's samples is (pass@k)."""
    if paths.path(path).is_dir():
        return _read_pass(path, field)
    out: dict[str, bool] = {}
    for where, row in read_json_lines(path):
        if "id" not in row or not isinstance(row.get(field), bool):
            fields = sorted(k for k, v in row.items() if isinstance(v, bool))
            raise RecordError(f"{where}: a predictions row needs an 'id' and a boolean {field!r} "
                              f"(its boolean fields: {', '.join(fields) or 'none'})")
        if str(row["id"]) in out:
            raise RecordError(f"{where}: question id {row['id']!r} appears twice")
        out[str(row["id"])] = row[field]
    if not out:
        raise RecordError(f"{path}: no predictions")
    return out


def _read_pass(directory, field: str) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for row in read_sample_dirs([directory]):
        if not isinstance(row.get(field), bool):
            raise RecordError(f"{directory}: problem {row['problem']} sample {row['sample']} has "
                              f"no boolean {field!r}")
        key = str(row.get("id") or row["problem"])
        out[key] = out.get(key, False) or row[field]
    return out


def paired_comparison(a: dict[str, bool], b: dict[str, bool]) -> dict:
    """Two runs scored on the same questions: how many each alone got right, and the exact
    two-sided McNemar p-value (a binomial test on those discordant questions: the ones both
    runs got right, or both got wrong, say nothing about which run is better)."""
    _same_questions(a, b)
    only_a = sum(a[k] and not b[k] for k in a)
    only_b = sum(b[k] and not a[k] for k in a)
    both = sum(a[k] and b[k] for k in a)
    return {"n": len(a), "correct_a": only_a + both, "correct_b": only_b + both, "both": both,
            "only_a": only_a, "only_b": only_b, "neither": len(a) - both - only_a - only_b,
            "mcnemar_p": sign_test_p(only_a, only_b)}


def _same_questions(a: dict, b: dict) -> None:
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ValueError(f"the runs scored different questions ({len(only)} not in both, "
                         f"e.g. {only[:3]}): compare runs on the same data (ids hold the data "
                         "path as given to --data)")


def sign_test_p(x: int, y: int) -> float:
    """The exact two-sided binomial (sign) test of x successes against y at one half."""
    n, k = x + y, min(x, y)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0


def replicate_comparison(a_runs: Sequence[dict[str, bool]],
                         b_runs: Sequence[dict[str, bool]]) -> dict:
    """Two arms, each trained more than once (other seeds or data orders), on the same
    questions: per question the share of A's runs that got it right against B's share, and the
    exact sign test over the questions where the shares differ. One run a side is McNemar's
    test. The runs are taken as given: the test says whether A is right on more questions than
    B run for run, not how far another seed would move either arm; compare the arms' spread
    (`correct_a`, `correct_b`) with their difference for that. Both arms need the same number
    of runs: with unequal counts the sign is not symmetric even when every run came from the
    same recipe (hard questions favour the arm with more runs, easy ones the other)."""
    if not a_runs or not b_runs:
        raise ValueError("replicate_comparison: no runs given for an arm")
    if len(a_runs) != len(b_runs):
        raise ValueError(f"compare arms with the same number of runs (got {len(a_runs)} and "
                         f"{len(b_runs)}): with unequal counts the sign test leans one way")
    for run in [*a_runs[1:], *b_runs]:
        _same_questions(a_runs[0], run)
    # the same number of runs a side: the runs right per question compare as the shares do
    diff = [sum(r[q] for r in a_runs) - sum(r[q] for r in b_runs) for q in a_runs[0]]
    more_a, more_b = sum(d > 0 for d in diff), sum(d < 0 for d in diff)
    return {"n": len(diff), "runs_a": len(a_runs), "runs_b": len(b_runs),
            "correct_a": [sum(run.values()) for run in a_runs],
            "correct_b": [sum(run.values()) for run in b_runs],
            "more_a": more_a, "more_b": more_b, "sign_p": sign_test_p(more_a, more_b)}


def paired_from_files(a: str | os.PathLike | Sequence[str | os.PathLike],
                      b: str | os.PathLike | Sequence[str | os.PathLike],
                      field_a: str = "correct", field_b: str | None = None) -> dict:
    """`cotjax report paired A B FIELD_A FIELD_B` as a dict: the two predictions files' paths
    and fields, and `paired_comparison` of A's `field_a` against B's `field_b` (default:
    `field_a`), e.g. a maj@k vote (`maj_correct`) against greedy answers (`correct`). A or B a
    list of several runs' files: `replicate_comparison` of the two arms."""
    field_b = field_b or field_a
    if isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike)):
        return {"a": str(a), "b": str(b), "field_a": field_a, "field_b": field_b,
                **paired_comparison(read_correct(a, field_a), read_correct(b, field_b))}
    a, b = ([p] if isinstance(p, (str, os.PathLike)) else list(p) for p in (a, b))
    return {"a": [str(p) for p in a], "b": [str(p) for p in b], "field_a": field_a,
            "field_b": field_b, **replicate_comparison([read_correct(p, field_a) for p in a],
                                                       [read_correct(p, field_b) for p in b])}


ERROR_KINDS = ("cut", "no_answer", "no_claims", "arithmetic", "answer_not_from_chain", "setup")


def error_kind(row: dict) -> str | None:
    """Why a scored prediction is wrong, first match in ERROR_KINDS order; None when it is
    right. `cut`: the length limit ended it; `no_answer`: no final answer could be read;
    `no_claims`: no arithmetic claim to check (or a chain too long to check); `arithmetic`:
    some claim is false (a computing error); `answer_not_from_chain`: the answer is not the
    value the last claim states;
    `setup`: finished, every claim true, the answer the chain's own result, and still wrong:
    the expressions were set up wrongly (a reasoning error)."""
    if row["correct"]:
        return None
    if row.get("finish") == "length":
        return "cut"
    if row.get("extracted") is None:
        return "no_answer"
    if not row.get("steps_total") or not row.get("steps_checked", True):
        return "no_claims"
    if row["steps_valid"] < row["steps_total"]:
        return "arithmetic"
    if row.get("answer_differs_from_last_step"):
        return "answer_not_from_chain"
    return "setup"


def error_split(rows: Iterable[dict]) -> dict:
    """`cotjax report errors`: the wrong predictions of a run counted by `error_kind`."""
    rows = list(rows)
    kinds = collections.Counter(error_kind(r) for r in rows)
    return {"n": len(rows), "correct": kinds.pop(None, 0),
            "wrong": sum(kinds.values()), **{k: kinds[k] for k in ERROR_KINDS}}


def accuracy_by_steps(rows: Iterable[dict]) -> dict[int, dict]:
    """predictions.jsonl rows grouped by the number of operations in their question:
    {steps: {n, correct, accuracy, steps_valid_share}}, in step order."""
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(steps_in_question(row["question"]), []).append(row)
    out = {}
    for steps in sorted(groups):
        rs = groups[steps]
        correct = sum(bool(r["correct"]) for r in rs)
        claims = sum(r["steps_total"] for r in rs)
        out[steps] = {"n": len(rs), "correct": correct, "accuracy": correct / len(rs),
                      "steps_valid_share": (sum(r["steps_valid"] for r in rs) / claims
                                            if claims else None)}
    return out


def plot_by_steps(tables: dict[str, dict[int, dict]], path: str | pathlib.Path) -> None:
    """Accuracy against number of operations, one line per run, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, table in tables.items():
        steps = sorted(table)
        ax.plot(steps, [table[s]["accuracy"] for s in steps], marker="o", label=label)
    ax.set_xlabel("operations in the problem")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Faithfulness experiments (cotjax.faithfulness through `cotjax eval`)

FAITHFULNESS = ("n", "accuracy", "faithfulness_n", "early_answering_aoc",
                "corrupted_step_answer_changed", "corrupted_step_follows_chain",
                "corrupted_step_n", "corrupted_step_reaches_answer", "filler_accuracy",
                "no_chain_accuracy", "full_chain_accuracy", "faithfulness_answer_differs")


def faithfulness_table(runs: dict[str, str | pathlib.Path]) -> dict[str, dict]:
    """label -> the faithfulness figures of an eval directory's summary.json (run with
    eval.faithfulness), with its model, prompting, curve and positions."""
    table = {}
    for label, directory in runs.items():
        path = pathlib.Path(directory) / "summary.json"
        summary = json.loads(path.read_text())
        if "faithfulness" not in summary:
            raise ValueError(f"{path}: no faithfulness figures (run cotjax eval with "
                             "--config.eval.faithfulness=all)")
        table[label] = {k: summary.get(k) for k in (
            *FAITHFULNESS, "model", "prompting", "early_answering_curve",
            "corrupted_step_by_position", "faithfulness_not_applicable", "faithfulness_seconds")}
    return table


def plot_early_answering(table: dict[str, dict], ax=None):
    """Early-answering curves: per model, the share of problems whose answer with only a
    fraction of the chain kept is the whole chain's answer."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.8, 3.8))
    for label, row in table.items():
        if row.get("early_answering_curve"):
            kept, same = zip(*row["early_answering_curve"])
            ax.plot(kept, same, marker="o",
                    label=f"{label} (AOC {row['early_answering_aoc']:.2f})")
    ax.set_xlabel("fraction of the chain kept")
    ax.set_ylabel("same answer as the whole chain")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def write_faithfulness(prefix: str | pathlib.Path, runs: dict[str, str]) -> dict[str, dict]:
    """PREFIX.json (the table) and PREFIX.png (the curves); prints the table."""
    import matplotlib

    matplotlib.use("Agg")
    prefix = pathlib.Path(prefix)
    table = faithfulness_table(runs)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(table, indent=1) + "\n")
    fig = plot_early_answering(table)
    fig.savefig(prefix.with_suffix(".png"), dpi=120)
    shown = ("n", "accuracy", "early_answering_aoc", "corrupted_step_answer_changed",
             "corrupted_step_follows_chain", "filler_accuracy", "no_chain_accuracy")
    print(f"{'model':<24}" + "".join(f"{k[:14]:>15}" for k in shown))
    for label, row in table.items():
        print(f"{label:<24}" + "".join(f"{_shown(row[k]):>15}" for k in shown))
    return table


# ---------------------------------------------------------------------------------------------
# Rescoring committed runs under the current rules

# The figures `cotjax report rescore` prints for each file, old -> new.
HEADLINE = ("accuracy", "accuracy_flexible", "maj_accuracy", "maj_accuracy_flexible",
            "sample_accuracy", "sample_accuracy_flexible")
_PREDICTIONS = "predictions.jsonl"


def summary_path_for(predictions: str | pathlib.Path) -> pathlib.Path:
    """The summary beside a predictions file, as `cotjax eval` and the experiment stages name
    them: `predictions.jsonl` -> `summary.json`, `X_predictions.jsonl` -> `X_summary.json`."""
    path = pathlib.Path(predictions)
    if path.name == _PREDICTIONS:
        return path.with_name("summary.json")
    if path.name.endswith("_" + _PREDICTIONS):
        return path.with_name(path.name[: -len(_PREDICTIONS)] + "summary.json")
    raise ValueError(f"{path}: not a predictions file (predictions.jsonl or "
                     "NAME_predictions.jsonl)")


def prediction_files(paths: Iterable[str | pathlib.Path],
                     skipped: list | None = None) -> list[pathlib.Path]:
    """Predictions files named, or found under named directories (recursively), in order.
    With a `skipped` list, files found under a directory without a summary beside them (a
    reranking's predictions.jsonl, not an eval's) go there instead; named files always count."""
    out: list[pathlib.Path] = []
    for given in paths:
        path = pathlib.Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*" + _PREDICTIONS)
                           if p.name == _PREDICTIONS or p.name.endswith("_" + _PREDICTIONS))
            if not found:
                raise FileNotFoundError(f"{path}: no predictions.jsonl or *_predictions.jsonl "
                                        "under it")
            if skipped is not None:
                has = {p: summary_path_for(p).is_file() for p in found}
                skipped += [p for p in found if not has[p]]
                found = [p for p in found if has[p]]
            out += found
        elif path.is_file():
            summary_path_for(path)  # names it a predictions file, or raises
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return list(dict.fromkeys(out))


def rescore_rows(rows: Iterable[tuple[str, dict]], task: str) -> list[dict]:
    """(where, row) pairs of a predictions file scored again from their text alone: each row's
    `generation` and `gold` (and each sample's `generation`) through `score_prediction` and
    `score_samples`. Other fields (id, question, finish, ...) and the key order are kept."""
    out = []
    for where, row in rows:
        missing = [k for k in ("generation", "gold") if not isinstance(row.get(k), str)]
        samples = row.get("samples")
        if samples is not None and not (isinstance(samples, list) and all(
                isinstance(x, dict) and isinstance(x.get("generation"), str) for x in samples)):
            missing.append("samples[].generation")
        if missing:
            raise RecordError(f"{where}: cannot rescore a row without {', '.join(missing)}")
        new = {**row, **score_prediction(row["generation"], row["gold"], task)}
        if samples is not None:
            votes = score_samples([x["generation"] for x in samples], row["gold"], task)
            new["samples"] = [{**old, **scores}
                              for old, scores in zip(samples, votes.pop("samples"), strict=True)]
            new.update(votes)
        out.append(new)
    return out


def rescore_summary(old: dict, rows: Sequence[dict], task: str) -> dict:
    """The summary of rescored rows: every field `summarize` computes, new, then the old
    summary's other fields (model, data, prompting, timings, maj_n, ...) as they were."""
    scores = summarize(rows, task)
    return {**scores, **{k: v for k, v in old.items() if k not in scores}}


@dataclasses.dataclass
class Rescored:
    """One predictions file scored again: what would change (or did, when written)."""

    predictions: pathlib.Path
    summary_path: pathlib.Path
    old_summary: dict
    summary: dict
    rows: list[dict]
    rows_changed: int
    row_fields_changed: dict[str, int]  # field (samples' as "samples[].field") -> rows changed

    @property
    def summary_changed(self) -> dict[str, tuple]:
        """{field: (old, new)} of every summary field that moved, appeared or went away."""
        keys = list(self.summary) + [k for k in self.old_summary if k not in self.summary]
        return {k: (self.old_summary.get(k), self.summary.get(k)) for k in keys
                if self.old_summary.get(k, _MISSING) != self.summary.get(k, _MISSING)}

    @property
    def changed(self) -> bool:
        return bool(self.rows_changed or self.summary_changed)

    def describe(self) -> str:
        """Old -> new headline accuracies (with the new 95% interval), and what else moved."""
        moved = self.summary_changed
        n = self.summary["n"]
        head = (f"{self.rows_changed} of {n} rows and {len(moved)} summary fields change"
                if self.changed else "unchanged")
        lines = [f"{self.predictions} ({self.summary['task']}, {n} rows): {head}"]
        for key in HEADLINE:
            if key in self.summary or key in self.old_summary:
                old, new = (_shown(d.get(key, _MISSING)) for d in (self.old_summary, self.summary))
                ci = self.summary.get(f"{key}_ci95")
                lines.append(f"  {key:<25} {old:>7} -> {new:<7}"
                             + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
                             + ("  (moved)" if key in moved and key in self.old_summary else ""))
        others = [k for k in moved if k not in HEADLINE and not k.endswith("_ci95")]
        if others:
            lines.append("  other summary fields: " + ", ".join(
                f"{k} {_shown(self.old_summary.get(k, _MISSING))} -> "
                f"{_shown(self.summary.get(k, _MISSING))}" for k in others))
        if self.row_fields_changed:
            lines.append("  row fields changed (rows): " + ", ".join(
                f"{k} ({n})" for k, n in sorted(self.row_fields_changed.items())))
        return "\n".join(lines)


_MISSING = object()


def _shown(value) -> str:
    if value is _MISSING:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def rescore_file(predictions: str | pathlib.Path, write: bool = False) -> Rescored:
    """Scores a predictions file again under the current rules (the task from the summary
    beside it); with `write`, rewrites the file and its summary when anything changed, in the
    format `write_report` writes."""
    path = pathlib.Path(predictions)
    summary_path = summary_path_for(path)
    if not summary_path.is_file():
        raise FileNotFoundError(f"{path}: no {summary_path.name} beside it (the task is read "
                                "from the summary)")
    old_summary = json.loads(summary_path.read_text(encoding="utf-8"))
    task = old_summary.get("task")
    if not isinstance(task, str):
        raise RecordError(f"{summary_path}: no 'task' field")
    old_rows = list(read_json_lines(path))
    if not old_rows:
        raise RecordError(f"{path}: no predictions")
    # Through JSON, as the file holds them (a span tuple reads back as a list).
    rows = json.loads(json.dumps(rescore_rows(old_rows, task)))
    fields: collections.Counter = collections.Counter()
    changed = 0
    for (_, old), new in zip(old_rows, rows, strict=True):
        moved = _changed_fields(old, new)
        changed += bool(moved)
        fields.update(moved)
    result = Rescored(path, summary_path, old_summary, rescore_summary(old_summary, rows, task),
                      rows, changed, dict(fields))
    if write and result.changed:
        _write_atomic(path, predictions_text(rows))
        _write_atomic(summary_path, summary_text(result.summary))
    return result


def _changed_fields(old: dict, new: dict) -> set[str]:
    moved = {k for k in set(old) | set(new) if k != "samples" and old.get(k, _MISSING)
             != new.get(k, _MISSING)}
    for a, b in zip(old.get("samples") or (), new.get("samples") or ()):
        moved |= {f"samples[].{k}" for k in set(a) | set(b)
                  if a.get(k, _MISSING) != b.get(k, _MISSING)}
    return moved


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def rescore(paths: Iterable[str | pathlib.Path], write: bool = True,
            out=print) -> list[Rescored]:
    """`cotjax report rescore`: every predictions file under `paths` scored again, rewritten
    (unless `write` is False), and described old -> new through `out`."""
    results, skipped = [], []
    for path in prediction_files(paths, skipped):
        result = rescore_file(path, write=write)
        out(result.describe())
        results.append(result)
    if skipped:
        out(f"skipped {len(skipped)} predictions file(s) with no summary beside them (not "
            f"eval predictions): {', '.join(map(str, skipped))}")
    return results


def main(args) -> None:
    """`cotjax report paired A B [FIELD [FIELD_B]]`: two runs' correct answers question by
    question and McNemar's exact p-value, as one JSON line (A or B a `cotjax sample` directory:
    a problem counts as right when any of its samples is, pass@k). FIELD (default correct; or
    correct_flexible, or maj_correct for a self-consistency run) is read from A, and from B too
    unless FIELD_B is given (e.g. a maj@k vote against greedy answers). A or B a comma-separated
    list of an arm's runs (other seeds): per question the share of runs right, and the sign
    test over the questions where the arms' shares differ.
    `cotjax report by-steps OUT_PREFIX LABEL=PREDICTIONS.jsonl ...`: accuracy by the number of
    operations of synthetic problems, printed and written to OUT_PREFIX.json and .png.
    `cotjax report rescore PATH ...`: every predictions.jsonl / *_predictions.jsonl (PATH a
    file, or a directory searched recursively) scored again from its generations under the
    current rules, with the task of the summary beside it; the file and its summary are
    rewritten (the summary's other fields kept) and the old -> new accuracies printed.
    `cotjax report errors PREDICTIONS ...`: each run's wrong answers split by why (cut by the
    length limit, no answer, no claims, a false claim, an answer not from the chain, or a
    setup error: every claim true and the answer the chain's result), one JSON line a file.
    `cotjax report faithfulness OUT_PREFIX LABEL=EVAL_DIR ...`: the faithfulness figures of
    eval directories (run with eval.faithfulness) as OUT_PREFIX.json, their early-answering
    curves as OUT_PREFIX.png, and a printed table.
    `cotjax report check PATH ...` (or `rescore --check`): the same, writing nothing; the exit
    status is 1 when any file would change."""
    if args[:1] == ["paired"] and len(args) in (3, 4, 5):
        field_a = args[3] if len(args) > 3 else "correct"
        field_b = args[4] if len(args) > 4 else field_a
        runs = [[p for p in arm.split(",") if p] if "," in arm else arm for arm in args[1:3]]
        print(json.dumps(paired_from_files(*runs, field_a, field_b)))
    elif args[:1] == ["by-steps"] and len(args) >= 3:
        prefix = pathlib.Path(args[1])
        tables = {}
        for spec in args[2:]:
            label, _, path = spec.partition("=")
            tables[label] = accuracy_by_steps(row for _, row in read_json_lines(path))
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".json").write_text(json.dumps(tables, indent=1) + "\n")
        plot_by_steps(tables, prefix.with_suffix(".png"))
        steps = sorted({s for t in tables.values() for s in t})
        print("operations  " + "  ".join(f"{s:>5}" for s in steps))
        for label, t in tables.items():
            print(f"{label:<11} " + "  ".join(
                f"{t[s]['accuracy']:5.2f}" if s in t else "    -" for s in steps))
    elif args[:1] == ["errors"] and len(args) >= 2:
        for path in args[1:]:
            print(json.dumps({"predictions": path,
                              **error_split(row for _, row in read_json_lines(path))}))
    elif args[:1] == ["faithfulness"] and len(args) >= 3:
        write_faithfulness(args[1], dict(spec.partition("=")[::2] for spec in args[2:]))
    elif args[:1] in (["rescore"], ["check"]) and [a for a in args[1:] if a != "--check"]:
        check = args[0] == "check" or "--check" in args[1:]
        results = rescore([a for a in args[1:] if a != "--check"], write=not check)
        stale = [r for r in results if r.changed]
        if check and stale:
            raise SystemExit(f"{len(stale)} of {len(results)} predictions files would change "
                             "under the current scoring rules; `cotjax report rescore PATH ...` "
                             "rewrites them")
        print(f"{len(stale)} of {len(results)} predictions files "
              + ("would change" if check else "rewritten"))
    else:
        raise SystemExit(main.__doc__)


def read_samples(path, *, repair: bool = False) -> list[dict]:
    """The sample lines of a shard. A bad line is an error naming file:line, except a last line
    without its newline (a run killed mid-write): with `repair` it is cut off the file and
    counted, else it is an error too."""
    path = paths.path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, keep = [], 0
    lines = data.split(b"\n")
    for n, line in enumerate(lines, 1):
        last = n == len(lines)
        if last and not line:
            break
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not {"problem", "sample"} <= row.keys():
                raise ValueError("not a sample line (needs 'problem' and 'sample')")
        except (ValueError, UnicodeDecodeError) as e:
            if last and repair:
                print(f"{path}:{n}: cut a half-written last line ({len(line)} bytes)")
                path.write_bytes(data[:keep])
                break
            raise ValueError(f"{path}:{n}: {e}") from None
        if last:  # complete JSON but no newline: a kill between the line and its newline
            if not repair:
                raise ValueError(f"{path}:{n}: the last line has no newline (a killed run?)")
            path.write_bytes(data[:keep] + line + b"\n")
        rows.append(row)
        keep += len(line) + 1
    return rows


def read_sample_dirs(dirs: Sequence) -> list[dict]:
    """Every sample line of the shards in `dirs` (bad lines: file:line errors)."""
    rows = []
    for d in dirs:
        shards = sorted(paths.path(d).glob("samples-*.jsonl"))
        if not shards:
            raise FileNotFoundError(f"{d}: no samples-*.jsonl shards (is it a cotjax sample --out?)")
        for shard in shards:
            rows += read_samples(shard)
    return rows
