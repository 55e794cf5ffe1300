"""What the notebooks show: tables, curves and side-by-side answers (cotjax.viz), and the answers
themselves (evaluate.compare_answers), which must be what `cotjax eval` gives each model."""

import json

import matplotlib
import pytest

matplotlib.use("Agg")  # no display in tests
import matplotlib.pyplot as plt  # noqa: E402

from cotjax import evaluate, report, scoring, sharding, viz  # noqa: E402
from cotjax.checkpoint import read_run_config  # noqa: E402
from cotjax.records import RecordError  # noqa: E402


def test_table_html_escapes_values_in_column_order():
    out = viz.table_html([{"b": "<x>", "a": 1}, {"a": 2}], ["a", "b"])
    assert out.startswith("<table><thead><tr><th>a</th><th>b</th></tr>")
    assert "<td>1</td><td>&lt;x&gt;</td>" in out
    assert "<td>2</td><td></td>" in out  # a missing key is an empty cell
    assert viz.table_html([]) == "<table><thead><tr></tr></thead><tbody></tbody></table>"


def test_param_summary_totals_by_dtype():
    table = [{"dtype": "float32", "size": 10}, {"dtype": "bfloat16", "size": 4},
             {"dtype": "float32", "size": 6}]
    assert viz.param_summary(table) == {"arrays": 3, "parameters": 20,
                                        "by_dtype": {"float32": 16, "bfloat16": 4}}


def test_plot_training_draws_the_keys_the_run_logged():
    rows = [{"step": 1, "loss": 3.0, "chain_loss": 3.1, "answer_acc": 0.1},
            {"step": 2, "loss": 2.0, "chain_loss": 2.2, "answer_loss": None, "answer_acc": 0.2},
            {"step": 2, "val/loss": 2.5, "val/answer_acc": 0.15}]
    fig = viz.plot_training(rows)
    loss_ax, acc_ax = fig.axes
    plt.close(fig)
    assert [ln.get_label() for ln in loss_ax.get_lines()] == ["loss", "chain_loss", "val/loss"]
    assert [ln.get_label() for ln in acc_ax.get_lines()] == ["answer_acc", "val/answer_acc"]
    assert list(loss_ax.get_lines()[0].get_xdata()) == [1, 2]


def test_compare_cli_draws_every_run_on_shared_panels(tmp_path):
    rows = {"cot": [{"step": 5, "loss": 1.2, "answer_loss": 0.9, "answer_acc": 0.7},
                    {"step": 10, "val/loss": 1.1, "val/answer_loss": 0.8, "val/answer_acc": 0.72}],
            "answer_only": [{"step": 5, "loss": 2.0, "answer_loss": 2.0, "answer_acc": 0.3}]}
    for name, run in rows.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run))
    fig = viz.plot_runs({name: viz.read_metrics_file(tmp_path / f"{name}.jsonl") for name in rows})
    labels = [[ln.get_label() for ln in ax.get_lines()] for ax in fig.axes]
    plt.close(fig)
    assert labels == [["cot: loss", "cot: val/loss", "answer_only: loss"],
                      ["cot: answer_loss", "cot: val/answer_loss", "answer_only: answer_loss"],
                      ["cot: answer_acc", "cot: val/answer_acc", "answer_only: answer_acc"]]
    out = tmp_path / "curves.png"
    viz.main(["compare", str(out), f"cot={tmp_path / 'cot.jsonl'}",
              f"answer_only={tmp_path / 'answer_only.jsonl'}"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(Exception, match="bad.jsonl:2"):
        viz.main(["compare", str(out), f"bad={tmp_path / 'bad.jsonl'}"])
    with pytest.raises(SystemExit):
        viz.main(["compare", str(out), "no-equals-sign"])


def _sweep_run(directory, name, val_losses, accuracy, correct):
    metrics = [{"step": 10 * i, "loss": 2.0}
               for i in range(1, len(val_losses) + 1)]
    metrics += [{"step": 10 * i, "val/loss": v} for i, v in enumerate(val_losses, 1)]
    (directory / f"{name}_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    summary = {"n": 500, "accuracy": accuracy, "accuracy_flexible": accuracy, "correct": correct,
               "step_validity": 0.6, "correct_with_invalid_step": 1, "finished_length": 7}
    (directory / f"{name}_summary.json").write_text(json.dumps(summary))


def test_sweep_reads_runs_and_picks_accuracy_then_val_loss(tmp_path):
    _sweep_run(tmp_path, "cot_lr5e-5_ep1", [1.0, 0.9], 0.026, 13)
    _sweep_run(tmp_path, "cot_lr2e-4_ep1", [1.0, 0.8, 0.75], 0.030, 15)
    _sweep_run(tmp_path, "cot_lr1e-4_ep2", [0.9, 0.7], 0.030, 15)  # tie: lower val loss wins
    _sweep_run(tmp_path, "answer_only_lr1e-4_ep3", [0.2], 0.040, 20)
    rows = viz.sweep_rows(tmp_path)
    assert [(r["mode"], r["lr"], r["epochs"], r["steps"], r["val_loss"]) for r in rows] == [
        ("answer_only", 1e-4, 3, 10, 0.2), ("cot", 5e-5, 1, 20, 0.9), ("cot", 1e-4, 2, 20, 0.7),
        ("cot", 2e-4, 1, 30, 0.75)]
    assert viz.best_run(rows, "cot")["name"] == "cot_lr1e-4_ep2"
    assert viz.best_run(rows, "answer_only")["name"] == "answer_only_lr1e-4_ep3"
    with pytest.raises(ValueError, match="no finished sweep run of mode 'x'"):
        viz.best_run(rows, "x")
    table = viz.sweep_table(rows).splitlines()
    assert len(table) == 2 + 4
    bold = [line for line in table if line.startswith("| **")]
    assert [line.split("|")[1:4] for line in bold] == [  # mode, lr, epochs of each choice
        [" **answer_only** ", " **0.0001** ", " **3** "], [" **cot** ", " **0.0001** ", " **2** "]]
    out = tmp_path / "sweep.png"
    viz.main(["sweep", str(tmp_path), str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "sweep.md").read_text().splitlines() == table


def test_sweep_rejects_runs_it_cannot_read(tmp_path):
    _sweep_run(tmp_path, "cot_lr1e-4_ep1", [0.9], 0.03, 15)
    (tmp_path / "cot_lr1e-4_ep1_metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 1}) + "\n")
    with pytest.raises(ValueError, match="cot_lr1e-4_ep1_metrics.jsonl: no validation loss"):
        viz.sweep_rows(tmp_path)
    (tmp_path / "cot_lr1e-4_ep1_metrics.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="no cot_lr1e-4_ep1_metrics.jsonl beside it"):
        viz.sweep_rows(tmp_path)
    (tmp_path / "cot_lr1e-4_ep1_summary.json").rename(tmp_path / "oops_summary.json")
    with pytest.raises(ValueError, match="oops_summary.json: not a sweep run name"):
        viz.sweep_rows(tmp_path)


def _question(generation_by_label: dict, gold="12") -> dict:
    answers = {label: {"generation": g, "finish": "eos",
                       **scoring.score_prediction(g, gold, "gsm8k")}
               for label, g in generation_by_label.items()}
    return {"id": "q", "question": "Is 3 < 4?", "gold": gold, "answers": answers}


def test_compare_html_puts_models_side_by_side_with_checked_steps():
    out = viz.compare_html([_question({"base": "2 + 2 = 5\nThe answer is 7",
                                       "fine-tuned": "3 * 4 = 12\n#### 12"})])
    assert "<th>question</th><th>base</th><th>fine-tuned</th>" in out
    assert "Is 3 &lt; 4?" in out and "gold: 12" in out  # the question's text is escaped
    base, tuned = out.split("</td>")[1:3]
    assert "wrong; steps valid 0/1" in base and 'background:#f6c0c0' in base  # false claim: red
    assert "correct; steps valid 1/1" in tuned and 'background:#c8f0c8' in tuned  # holds: green


def test_compare_answers_are_what_cotjax_eval_gives_each_model(tiny_run, tmp_path):
    workdir = tiny_run["workdir"]
    config, _ = read_run_config(workdir)
    config.eval.max_examples = 2
    mesh = sharding.optional_mesh(config.mesh)  # as run_eval places and decodes
    questions = evaluate.compare_answers(workdir, 2, mesh=mesh)
    assert [list(q["answers"]) for q in questions] == [["base", "fine-tuned"]] * 2
    for label, step in (("base", "base"), ("fine-tuned", None)):
        out = tmp_path / label
        evaluate.run_eval(config, str(workdir), step, out=str(out), progress=False)
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert [json.loads(json.dumps(q["answers"][label])) for q in questions] == rows
        assert [q["gold"] for q in questions] == [r["gold"] for r in rows]
    # the fine-tuned checkpoint is not the model the run started from
    assert any(q["answers"]["base"]["generation"] != q["answers"]["fine-tuned"]["generation"]
               for q in questions)


def _write_predictions(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_paired_cli_prints_the_comparison(tmp_path, capsys):
    for name, right in (("a", {1, 2, 3}), ("b", {3})):
        _write_predictions(tmp_path / f"{name}.jsonl",
                           [{"id": i, "correct": i in right} for i in range(1, 6)])
    report.main(["paired", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    out = json.loads(capsys.readouterr().out)
    assert (out["correct_a"], out["correct_b"], out["only_a"], out["only_b"]) == (3, 1, 2, 0)
    assert out["mcnemar_p"] == 0.5 and out["field_a"] == out["field_b"] == "correct"
    report.main(["paired", str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl"), "correct"])
    same = json.loads(capsys.readouterr().out)
    assert (same["only_a"], same["only_b"], same["mcnemar_p"]) == (0, 0, 1.0)


def test_paired_cli_one_field_applies_to_both_runs(tmp_path, capsys):
    # correct_flexible differs from correct in both files: B must be read with A's field too
    for name, right, flexible in (("a", {1}, {1, 2, 3}), ("b", {4}, {3, 4})):
        _write_predictions(tmp_path / f"{name}.jsonl", [
            {"id": i, "correct": i in right, "correct_flexible": i in flexible}
            for i in range(1, 6)])
    report.main(["paired", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "correct_flexible"])
    out = json.loads(capsys.readouterr().out)
    assert out["field_a"] == out["field_b"] == "correct_flexible"
    assert (out["correct_a"], out["correct_b"], out["both"], out["only_a"], out["only_b"]) == (
        3, 2, 1, 2, 1)


def test_paired_cli_compares_different_fields_and_names_a_missing_one(tmp_path, capsys):
    # a maj@k run's vote (maj_correct) against the same run's greedy answers (correct)
    rows = [{"id": i, "correct": i == 1, "maj_correct": i in (1, 2, 3)} for i in range(1, 6)]
    path = tmp_path / "maj.jsonl"
    _write_predictions(path, rows)
    report.main(["paired", str(path), str(path), "maj_correct", "correct"])
    out = json.loads(capsys.readouterr().out)
    assert (out["field_a"], out["field_b"]) == ("maj_correct", "correct")
    assert (out["correct_a"], out["correct_b"], out["only_a"], out["only_b"]) == (3, 1, 2, 0)
    with pytest.raises(RecordError, match=r"maj\.jsonl:1: .*'correct_flexible'.*maj_correct"):
        report.main(["paired", str(path), str(path), "maj_correct", "correct_flexible"])
