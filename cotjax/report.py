"""Reports of scored runs: prediction files, summaries as tables, paired tests.

Pure Python, no JAX.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterable

from cotjax.records import RecordError, read_json_lines
from cotjax.synthetic import steps_in_question

def format_table(summary: dict) -> str:
    """The summary as an aligned two-column console table."""
    width = max(len(key) for key in summary)
    lines = []
    for key, value in summary.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown:>10}")
    return "\n".join(lines)


def write_report(
    out_dir: str | pathlib.Path, rows: Iterable[dict], summary: dict
) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes `predictions.jsonl` (one line per question) and `summary.json` into `out_dir`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions, summary_path = out / "predictions.jsonl", out / "summary.json"
    with predictions.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary_text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    summary_path.write_text(summary_text, encoding="utf-8")
    return predictions, summary_path


def read_correct(path: str | pathlib.Path, field: str = "correct") -> dict[str, bool]:
    """{question id: whether it was answered correctly} from a run's predictions.jsonl."""
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


def paired_comparison(a: dict[str, bool], b: dict[str, bool]) -> dict:
    """Two runs scored on the same questions: how many each alone got right, and the exact
    two-sided McNemar p-value (a binomial test on those discordant questions: the ones both
    runs got right, or both got wrong, say nothing about which run is better)."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ValueError(f"the runs scored different questions ({len(only)} not in both, "
                         f"e.g. {only[:3]}): compare runs on the same data (ids hold the data "
                         "path as given to --data)")
    only_a = sum(a[k] and not b[k] for k in a)
    only_b = sum(b[k] and not a[k] for k in a)
    both = sum(a[k] and b[k] for k in a)
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"n": len(a), "correct_a": only_a + both, "correct_b": only_b + both, "both": both,
            "only_a": only_a, "only_b": only_b, "neither": len(a) - both - n,
            "mcnemar_p": p}


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




def main(args) -> None:
    """`cotjax report paired A B [FIELD [FIELD_B]]`: two runs' correct answers question by
    question and McNemar's exact p-value, as one JSON line. FIELD (default correct; or
    correct_flexible, or maj_correct for a self-consistency run) is read from A, and from B too
    unless FIELD_B is given (e.g. a maj@k vote against greedy answers).
    `cotjax report by-steps OUT_PREFIX LABEL=PREDICTIONS.jsonl ...`: accuracy by the number of
    operations of synthetic problems, printed and written to OUT_PREFIX.json and .png."""
    if args[:1] == ["paired"] and len(args) in (3, 4, 5):
        field_a = args[3] if len(args) > 3 else "correct"
        field_b = args[4] if len(args) > 4 else field_a
        a, b = read_correct(args[1], field_a), read_correct(args[2], field_b)
        print(json.dumps({"a": args[1], "b": args[2], "field_a": field_a, "field_b": field_b,
                          **paired_comparison(a, b)}))
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
    else:
        raise SystemExit(main.__doc__)
