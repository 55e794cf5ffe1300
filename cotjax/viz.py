"""Views for notebooks: packed batches as coloured tokens, parameter tables, training curves and
step-checked generations. Everything the notebooks show is computed here, so it is tested."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from cotjax import paths
from cotjax.records import read_json_lines
from cotjax.steps import check_steps

# Background hue per packed example; padding (segment 0) is grey.
_HUES = (210, 30, 120, 280, 0, 170, 60, 330)


def token_rows(batch: dict[str, np.ndarray], tokenizer, row: int = 0) -> list[dict]:
    """One dict per token of a packed row: text, segment, position, and the loss weight with
    which this token is *predicted* (the weight stored at the position before it)."""
    inputs, seg = batch["inputs"][row], batch["segment_ids"][row]
    w_pred = np.concatenate([[0.0], batch["weights"][row][:-1]])
    same = np.concatenate([[False], seg[1:] == seg[:-1]])
    return [{"text": tokenizer.decode([int(t)]), "token": int(t), "segment": int(s),
             "position": int(p), "weight": float(w) if ok else 0.0}
            for t, s, p, w, ok in zip(inputs, seg, batch["positions"][row], w_pred, same)]


def tokens_html(rows: Sequence[dict]) -> str:
    """Tokens coloured by packed example (hue) and loss weight (bold, underlined when > 0)."""
    spans = []
    for r in rows:
        hue = _HUES[(r["segment"] - 1) % len(_HUES)]
        bg = "#ddd" if r["segment"] == 0 else f"hsl({hue},70%,{88 if r['weight'] == 0 else 72}%)"
        style = f"background:{bg};" + ("font-weight:bold;text-decoration:underline;"
                                       if r["weight"] > 0 else "")
        title = f"segment {r['segment']} pos {r['position']} weight {r['weight']:g}"
        text = html.escape(r["text"]).replace("\n", "⏎<br>")
        spans.append(f'<span style="{style}" title="{title}">{text}</span>')
    return '<div style="font-family:monospace;line-height:1.8">' + "".join(spans) + "</div>"


def batch_summary(batch: dict[str, np.ndarray]) -> dict:
    """Examples per row, padding and loss-bearing shares of a packed batch."""
    seg = batch["segment_ids"]
    return {"rows": int(seg.shape[0]), "seq_len": int(seg.shape[1]),
            "examples": int(sum(len(set(r[r > 0].tolist())) for r in seg)),
            "non_padding": float((seg > 0).mean()),
            "weighted": float((batch["weights"] > 0).mean())}


def param_table(model) -> list[dict]:
    """Path, shape, dtype, size, logical axes and sharding of every parameter."""
    from flax import nnx

    out = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Variable)):  # QLoRA codes too
        value = var.get_value()
        sharding = getattr(value, "sharding", None)
        out.append({"path": "/".join(map(str, path)), "shape": tuple(value.shape),
                    "dtype": str(value.dtype), "size": int(np.prod(value.shape)),
                    "logical_axes": getattr(var, "logical_axes", None),
                    "sharding": str(getattr(sharding, "spec", sharding))})
    return out


def read_metrics(workdir) -> list[dict]:
    """The rows of a run's metrics.jsonl (a local workdir or a gs:// one)."""
    path = paths.path(workdir) / "metrics.jsonl"
    if paths.is_remote(workdir):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return read_metrics_file(path)


def read_metrics_file(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file (a bad line is an error naming file:line)."""

    return [row for _, row in read_json_lines(path)]


def plot_curves(rows: Iterable[dict], keys: Sequence[str], ax=None, prefix: str = ""):
    """Each key against `step` (rows lacking a key are skipped for it), labelled prefix + key;
    returns the axes."""
    import matplotlib.pyplot as plt

    rows = list(rows)
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=prefix + key)
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def steps_html(text: str, report) -> str:
    """A generation with each checked claim marked green (holds) or red (does not)."""
    out = html.escape(text)
    for step in report.steps:
        claim = html.escape(f"{step.expression}")
        colour = "#c8f0c8" if step.ok else "#f6c0c0"
        tip = f"= {step.claimed}; computed {step.computed}"
        out = out.replace(claim, f'<span style="background:{colour}" title="{html.escape(tip)}">'
                                 f"{claim}</span>", 1)
    return f'<div style="white-space:pre-wrap;font-family:monospace">{out}</div>'


def table_html(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as an HTML table (values escaped; `columns` default: the first row's keys)."""
    columns = list(columns or (rows[0].keys() if rows else ()))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def param_summary(table: Sequence[dict]) -> dict:
    """Totals of a `param_table`: arrays, parameters, and parameters per dtype."""
    by_dtype: dict[str, int] = {}
    for r in table:
        by_dtype[r["dtype"]] = by_dtype.get(r["dtype"], 0) + r["size"]
    return {"arrays": len(table), "parameters": sum(r["size"] for r in table),
            "by_dtype": by_dtype}


# metrics.jsonl keys: train rows carry the names, validation rows the same names under "val/".
LOSS_KEYS = ("loss", "chain_loss", "answer_loss", "val/loss", "val/chain_loss", "val/answer_loss")
ACCURACY_KEYS = ("answer_acc", "val/answer_acc")


def plot_training(rows: Iterable[dict]):
    """Losses and answer-token accuracy, train and validation, side by side; returns the figure."""
    import matplotlib.pyplot as plt

    rows = list(rows)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4))
    plot_curves(rows, LOSS_KEYS, loss_ax).set_title("loss per weighted token")
    plot_curves(rows, ACCURACY_KEYS, acc_ax).set_title("answer-token accuracy")
    fig.tight_layout()
    return fig


# Comparable across training modes: an answer-only run has no chain loss.
RUN_PANELS = {"loss per weighted token": ("loss", "val/loss"),
              "answer-token loss": ("answer_loss", "val/answer_loss"),
              "answer-token accuracy": ("answer_acc", "val/answer_acc")}


def plot_runs(runs: dict[str, Sequence[dict]]):
    """Several runs' metrics rows on shared panels (RUN_PANELS), lines labelled 'run: key';
    returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RUN_PANELS), figsize=(5 * len(RUN_PANELS), 4))
    for ax, (title, keys) in zip(axes, RUN_PANELS.items()):
        for name, rows in runs.items():
            plot_curves(rows, keys, ax, prefix=f"{name}: ")
        ax.set_title(title)
    fig.tight_layout()
    return fig


# A sweep run's files are NAME_summary.json and NAME_metrics.jsonl, NAME = MODE_lrLR_epEPOCHS.
_SWEEP_NAME = re.compile(r"^(?P<mode>.+)_lr(?P<lr>[0-9.eE+-]+)_ep(?P<epochs>[0-9]+)$")


def sweep_rows(directory: str | Path) -> list[dict]:
    """One row per finished sweep run in `directory` (launch/sweep_gsm8k.sh's output): its mode,
    lr, epochs, steps, last validation loss and the evaluation summary's figures."""
    rows = []
    for summary_file in sorted(Path(directory).glob("*_summary.json")):
        name = summary_file.name[:-len("_summary.json")]
        m = _SWEEP_NAME.match(name)
        if m is None:
            raise ValueError(f"{summary_file}: not a sweep run name (MODE_lrLR_epEPOCHS)")
        metrics_file = summary_file.with_name(f"{name}_metrics.jsonl")
        if not metrics_file.is_file():
            raise FileNotFoundError(f"{summary_file} has no {metrics_file.name} beside it")
        metrics = read_metrics_file(metrics_file)
        val = [r for r in metrics if "val/loss" in r]
        if not val:
            raise ValueError(f"{metrics_file}: no validation loss (train.eval_every)")
        s = json.loads(summary_file.read_text())
        rows.append({"name": name, "mode": m["mode"], "lr": float(m["lr"]),
                     "epochs": int(m["epochs"]), "steps": int(val[-1]["step"]),
                     "val_loss": float(val[-1]["val/loss"]), "accuracy": s["accuracy"],
                     "accuracy_flexible": s["accuracy_flexible"], "correct": s["correct"],
                     "n": s["n"], "step_validity": s["step_validity"],
                     "correct_with_invalid_step": s["correct_with_invalid_step"],
                     "finished_length": s["finished_length"]})
    return sorted(rows, key=lambda r: (r["mode"], r["lr"], r["epochs"]))


def best_run(rows: Sequence[dict], mode: str) -> dict:
    """The sweep's choice for a mode: the highest strict validation accuracy; ties go to the
    lower final validation loss."""
    candidates = [r for r in rows if r["mode"] == mode]
    if not candidates:
        raise ValueError(f"no finished sweep run of mode {mode!r}")
    return min(candidates, key=lambda r: (-r["accuracy"], r["val_loss"]))


def sweep_table(rows: Sequence[dict]) -> str:
    """The sweep as a markdown table, the chosen run of each mode in bold."""
    chosen = {best_run(rows, mode)["name"] for mode in {r["mode"] for r in rows}}
    lines = ["| mode | lr | epochs | steps | val loss | strict acc (correct) | flexible | "
             "steps valid | correct via invalid step | hit length |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [r["mode"], f"{r['lr']:g}", str(r["epochs"]), str(r["steps"]),
                 f"{r['val_loss']:.3f}", f"{r['accuracy']:.3f} ({r['correct']}/{r['n']})",
                 f"{r['accuracy_flexible']:.3f}", f"{r['step_validity']:.2f}",
                 str(r["correct_with_invalid_step"]), str(r["finished_length"])]
        if r["name"] in chosen:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict]):
    """Validation loss and strict accuracy against epochs, one line per (mode, lr)."""
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, lr in sorted({(r["mode"], r["lr"]) for r in rows}):
        line = sorted((r for r in rows if (r["mode"], r["lr"]) == (mode, lr)),
                      key=lambda r: r["epochs"])
        epochs = [r["epochs"] for r in line]
        loss_ax.plot(epochs, [r["val_loss"] for r in line], marker="o", label=f"{mode} lr {lr:g}")
        acc_ax.plot(epochs, [r["accuracy"] for r in line], marker="o", label=f"{mode} lr {lr:g}")
    for ax, title in ((loss_ax, "validation loss at the end of the run"),
                      (acc_ax, "strict accuracy, greedy, validation slice")):
        ax.set_xlabel("epochs (each run its own warmup + cosine schedule)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    return fig


def main(args: Sequence[str]) -> None:
    """cotjax viz compare OUT.png NAME=METRICS.jsonl ...: training curves of several runs (a
    metrics.jsonl, or the workdir holding one) side by side, saved as a PNG.
    cotjax viz sweep DIR OUT.png: a learning-rate x epochs sweep's table (printed and written
    to DIR/sweep.md) and plot."""
    import matplotlib

    matplotlib.use("Agg")
    args = list(args)
    if args[:1] == ["sweep"] and len(args) == 3:
        rows = sweep_rows(args[1])
        table = sweep_table(rows)
        (Path(args[1]) / "sweep.md").write_text(table + "\n")
        plot_sweep(rows).savefig(args[2], dpi=110)
        print(table)
        print(f"wrote {Path(args[1]) / 'sweep.md'} and {args[2]}")
        return
    if args[:1] != ["compare"] or len(args) < 3 or any("=" not in a for a in args[2:]):
        raise SystemExit(main.__doc__)
    runs = {}
    for spec in args[2:]:
        name, _, where = spec.partition("=")
        is_run = paths.path(where).is_dir()  # a workdir (local or gs://), else a metrics file
        runs[name] = read_metrics(where) if is_run else read_metrics_file(where)
    fig = plot_runs(runs)
    fig.savefig(args[1], dpi=110)
    print(f"wrote {args[1]}")


def _answer_cell(row: dict) -> str:
    verdict = "correct" if row["correct"] else "wrong"
    colour = "#1a7f37" if row["correct"] else "#b42318"
    head = (f'<div style="color:{colour}">answer {html.escape(str(row["extracted"]))}: {verdict}; '
            f'steps valid {row["steps_valid"]}/{row["steps_total"]}; '
            f'finish {html.escape(str(row.get("finish", "")))}</div>')
    return head + steps_html(row["generation"], check_steps(row["generation"]))


def compare_html(questions: Sequence[dict]) -> str:
    """`evaluate.compare_answers` output as a table: the question and gold answer, then one
    column per model with its generation, step checks highlighted and its verdict."""
    labels = list(questions[0]["answers"]) if questions else []
    head = "<th>question</th>" + "".join(f"<th>{html.escape(lb)}</th>" for lb in labels)
    cell = '<td style="vertical-align:top;text-align:left">'
    body = ""
    for q in questions:
        body += (f"<tr>{cell}{html.escape(q['question'])}<br><b>gold: "
                 f"{html.escape(str(q['gold']))}</b></td>")
        body += "".join(f"{cell}{_answer_cell(q['answers'][lb])}</td>" for lb in labels) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"



def interventions_html(row: dict) -> str:
    """One problem's faithfulness interventions side by side: the chain and its answer; the
    answer with the first k steps kept and with filler; each corrupted step and where the
    model went from it."""
    f = row["faithfulness"]
    esc = html.escape
    if not f["applicable"]:
        return f"<p>not applicable: {esc(f['reason'])}</p>"
    cell = '<td style="vertical-align:top;text-align:left;white-space:pre-wrap">'
    early = "".join(f"<tr>{cell}{e['k']} ({e['kept']:.0%})</td>{cell}{esc(str(e['answer']))}"
                    f"</td></tr>" for e in f.get("early", []))
    early += (f"<tr>{cell}filler</td>{cell}{esc(str(f['filler_answer']))}</td></tr>"
              if "filler_answer" in f else "")
    corrupted = "".join(
        f"<tr>{cell}{esc(', '.join(c['positions']))}</td>{cell}{esc(str(c.get('original')))} &rarr; "
        f"{esc(str(c.get('changed')))}</td>{cell}{esc(str(c.get('implied')))}</td>"
        f"{cell}{esc(str(c.get('answer', c.get('reason'))))}</td>"
        f"{cell}{esc(c.get('continuation', '')[:300])}</td></tr>" for c in f["corrupted"])
    return (f"<p><b>{esc(row['question'])}</b> (gold {esc(str(row['gold']))})</p><table><tr>"
            f"{cell}{steps_html(row['generation'], check_steps(row['generation']))}"
            f"<br><b>answer {esc(str(f['answer']))}</b></td>{cell}"
            f"<table><tr><th>steps kept</th><th>answer</th></tr>{early}</table></td></tr></table>"
            f"<table><tr><th>corrupted</th><th>value</th><th>implied answer</th>"
            f"<th>answer</th><th>continuation</th></tr>{corrupted}</table>")
