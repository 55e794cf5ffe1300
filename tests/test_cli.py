"""The command line: every subcommand's --help exits 0 with its own flags, and every user error
is one line on stderr with a non-zero exit (a suggestion where one exists), never a traceback."""

import json
import pathlib
import subprocess
import sys

import pytest

from cotjax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = f"--config={ROOT / 'configs/base.py'}"


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["cotjax", *argv])
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_subcommand_answers_help_with_its_own_flags(capsys, name):
    code, out, err = _run(capsys, name, "--help")
    assert code == 0 and not err
    assert out.startswith(f"usage: cotjax {name}")
    command = cli.COMMANDS[name]
    for flag in command.flags + (("config",) if command.config else ()):
        assert f"--{flag}" in out, (name, flag)
    others = set(cli.FLAG_SPECS) - set(command.flags)
    assert not any(f"--{flag}:" in out for flag in others), name


def test_top_level_help_lists_every_subcommand(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and all(f"  {name} " in out for name in cli.COMMANDS)


@pytest.mark.parametrize("argv, message", [
    (["bogus"], "cotjax: unknown subcommand 'bogus'"),
    (["evall"], "(did you mean eval?)"),
    (["train", BASE, "--workdr=x"], "unknown flag --workdr (did you mean workdir?)"),
    (["train", BASE], "cotjax train: needs --workdir"),
    (["train", "--workdir=x"], "cotjax train: needs --config=PATH"),
    (["config", BASE, "--config.train.lrr=1"], "unknown config key 'train.lrr' (did you mean lr?)"),
    (["config", BASE, "--config.trian.lr=1"], "unknown config key 'trian.lr' (did you mean train?)"),
    (["eval", "--out=/tmp/x"], "say which model to evaluate"),
    (["config", f"--config={ROOT / 'configs/gsm8k.py'}:modl=x"],
     "ValueError: unknown config argument 'modl'; known: model, mode, recipe"),
    (["export", "--workdir=x"], "needs --out"),
    (["generate"], "needs --prompt"),
    (["search", "--out=/tmp/x"], "needs --prm"),
    (["rerank", "--combine=a,b", "--prm=p", "--aggregate=prod", "--out=/tmp/x"],
     "--combine reads earlier reranks' scores (each with its own aggregate); drop --prm, "
     "--aggregate"),
    (["rerank", "--combine=a,b"], "needs --out"),
    (["rerank", "--headroom=0.6,x", "--samples=s", "--out=/tmp/x"],
     "--headroom=0.6,x: give AUROCs like 0.6,0.7,0.8"),
    (["rerank", "--headroom=0.6", "--samples=s", "--prm=p", "--max_problems=5", "--out=/tmp/x"],
     "--headroom simulates the verifier; drop --prm, --max_problems"),
    (["data-stats", BASE, "extra"], "takes no positional arguments"),
])
def test_user_errors_are_one_line(capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code not in (0, None)
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_missing_workdir_is_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "export", f"--workdir={tmp_path / 'nothing'}",
                        f"--out={tmp_path / 'hf'}")
    assert code == 1 and "nothing" in err and "config.json" in err
    assert len(err.strip().splitlines()) == 1


def test_config_prints_the_resolved_config_with_overrides(capsys):
    cli.main(["cotjax", "config", f"--config={ROOT / 'configs/gsm8k.py'}:mode=answer_only",
              "--config.train.lr=0.5"])
    config = json.loads(capsys.readouterr().out)
    assert config["data"]["mode"] == "answer_only" and config["train"]["lr"] == 0.5
    assert config["model"] == "smollm2-135m-instruct" and config["data"]["seq_len"] == 512


def test_console_script_runs_without_a_traceback():
    exe = pathlib.Path(sys.executable).with_name("cotjax")
    for argv in (["--help"], ["train", "--help"], ["config", BASE]):
        proc = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120,
                              cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_generate_with_a_workdir_answers_through_the_runs_template(capsys, tiny_run):
    from cotjax import evaluate, load, records

    question = "Start with 7. Add 5. What is the result?"
    cli.main(["cotjax", "generate", f"--workdir={tiny_run['workdir']}", f"--prompt={question}",
              "--max_new_tokens=8"])
    text = capsys.readouterr().out
    net, model_cfg, tokenizer, config = load.load_run_model(tiny_run["workdir"])
    record = records.CoTRecord(question=question, chain="", answer="0")
    [row] = evaluate.greedy_answers(net, model_cfg, tokenizer, config, [record],
                                    max_new_tokens=8)
    assert text == row["generation"] + "\n"  # exactly what `cotjax eval` would decode
    sampled = []
    for _ in range(2):
        cli.main(["cotjax", "generate", f"--workdir={tiny_run['workdir']}",
                  f"--prompt={question}", "--max_new_tokens=8", "--temperature=1.0",
                  "--seed=3"])
        sampled.append(capsys.readouterr().out)
    assert sampled[0] == sampled[1]  # seeded


def test_wandb_is_imported_only_when_asked_and_gets_the_metrics(tmp_path, monkeypatch):
    import types

    from cotjax import metrics

    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    writer = metrics.MetricWriter(tmp_path / "plain")
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert "wandb" not in sys.modules

    logged = []
    run = types.SimpleNamespace(log=lambda m, step: logged.append((step, m)),
                                finish=lambda: logged.append("finished"))
    fake = types.SimpleNamespace(init=lambda **kw: logged.append(kw["project"]) or run)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    writer = metrics.MetricWriter(tmp_path / "wb", wandb_project="cot", run_config={"a": 1})
    writer.write(2, {"loss": 0.5, "bad": float("nan")})
    writer.close()
    assert logged == ["cot", (2, {"loss": 0.5}), "finished"]


def test_a_missing_checkpoint_step_is_one_line(capsys, tiny_run, tmp_path):
    code, _, err = _run(capsys, "export", f"--workdir={tiny_run['workdir']}", "--step=999",
                        f"--out={tmp_path / 'hf'}")
    assert code == 1 and "no checkpoint for step 999" in err and "steps: [" in err
    assert len(err.strip().splitlines()) == 1


def test_eval_of_a_run_takes_overrides_of_its_own_config(capsys, tiny_run, tmp_path):
    out = tmp_path / "eval"
    cli.main(["cotjax", "eval", f"--workdir={tiny_run['workdir']}", f"--out={out}",
              "--config.eval.max_examples=2", "--config.eval.max_new_tokens=4"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and summary["max_new_tokens"] == 4
    code, _, err = _run(capsys, "eval", f"--workdir={tiny_run['workdir']}", f"--out={out}",
                        "--config.eval.max_exmples=2")
    assert code == 1 and "has no key 'eval.max_exmples' (did you mean max_examples?)" in err


def test_a_missing_config_file_is_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "config", f"--config={tmp_path / 'nope.py'}")
    assert code == 2 and f"config file {tmp_path / 'nope.py'} does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_a_run_config_override_of_the_wrong_type_names_the_key(capsys, tiny_run, tmp_path):
    code, _, err = _run(capsys, "eval", f"--workdir={tiny_run['workdir']}",
                        f"--out={tmp_path / 'e'}", "--config.eval.max_new_tokens=1e3")
    assert code == 1 and "eval.max_new_tokens='1e3'" in err


def test_generate_honours_overrides_of_the_runs_config(capsys, tiny_run, monkeypatch):
    from cotjax import evaluate

    prompts = []
    build = evaluate.build_prompt
    monkeypatch.setattr(evaluate, "build_prompt",
                        lambda *a, **kw: prompts.append(build(*a, **kw)) or prompts[-1])
    cue = "Think about it carefully, step by step."
    cli.main(["cotjax", "generate", f"--workdir={tiny_run['workdir']}", "--max_new_tokens=2",
              "--prompt=Start with 7. Add 5. What is the result?",
              "--config.eval.prompting=zero_shot_cot", f"--config.eval.cot_cue={cue}"])
    assert prompts and prompts[-1].endswith(cue)  # the run's prompting, overridden
