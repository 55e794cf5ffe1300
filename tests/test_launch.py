"""Launchers: the exact commands they would run in dry-run mode (no cloud access here), and the
experiment scripts around a stand-in `cotjax`."""

import os
import shlex
import signal
import json
import subprocess
import sys
import time

import pytest


def _dry(script, *args, env=None):
    out = subprocess.run(["bash", f"launch/{script}", *args], capture_output=True, text=True,
                         env=env, check=False)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]


def test_local_single_process():
    (cmd,) = _dry("local.sh", "--config=configs/quickstart.py", "--workdir=runs/q", "--dry-run",
                  "--", "--config.train.steps=5")
    assert cmd == [".venv/bin/cotjax", "train", "--config=configs/quickstart.py",
                   "--workdir=runs/q", "--config.train.steps=5"]


def test_local_processes_join_one_coordinator():
    cmds = _dry("local.sh", "--config=c.py", "--workdir=w", "--processes=2", "--port=9999",
                "--dry-run")
    assert len(cmds) == 2
    for i, cmd in enumerate(cmds):
        assert cmd[:4] == ["env", "COTJAX_COORDINATOR=127.0.0.1:9999", "COTJAX_NUM_PROCESSES=2",
                           f"COTJAX_PROCESS_ID={i}"]
        assert cmd[4:6] == [".venv/bin/cotjax", "train"]


def test_tpu_pod_runs_every_step_on_all_workers():
    cmds = _dry("tpu_pod.sh", "--tpu=pod1", "--zone=us-central2-b", "--project=p",
                "--config=configs/base.py", "--workdir=gs://b/run", "--create", "--delete",
                "--dry-run", "--", "--config.train.steps=100")
    gcloud = [c for c in cmds if c[0] == "gcloud"]
    assert gcloud[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert "--accelerator-type=v5litepod-16" in gcloud[0]
    assert gcloud[-1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod1"]
    ssh = [c for c in gcloud if c[4] == "ssh"]
    assert all("--worker=all" in c and "--zone=us-central2-b" in c for c in ssh)
    commands = [next(a for a in c if a.startswith("--command="))[10:] for c in ssh]
    assert "COTJAX_JAX=tpu bash setup.sh" in commands[1]
    train = shlex.split(commands[2].split("&&", 1)[1].split("2>&1")[0])
    assert train == [".venv/bin/cotjax", "train", "--config=configs/base.py",
                     "--workdir=gs://b/run", "--config.train.steps=100"]
    assert ["git", "archive"] == cmds[1][:2]


def test_tpu_pod_requires_its_options():
    out = subprocess.run(["bash", "launch/tpu_pod.sh", "--tpu=x", "--dry-run"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "missing --zone" in out.stderr


def test_slurm_uses_srun_one_task_per_node():
    (cmd,) = _dry("slurm_gpu.sbatch", "--config=configs/base.py", "--workdir=/tmp/x",
                  env={"DRY_RUN": "1", "PATH": "/usr/bin:/bin"})
    assert cmd[:3] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1"]
    assert cmd[3:7] == [".venv/bin/cotjax", "train", "--config=configs/base.py", "--workdir=/tmp/x"]
    assert "--config.compute_dtype=bfloat16" in cmd


@pytest.mark.parametrize("script", ["local.sh", "tpu_pod.sh", "slurm_gpu.sbatch"])
def test_unknown_option_is_rejected(script):
    out = subprocess.run(["bash", f"launch/{script}", "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown option --bogus" in out.stderr


def test_experiment_script_rejects_an_unknown_stage_before_running_anything(tmp_path):
    out = subprocess.run(["bash", "launch/experiment_gsm8k.sh", str(tmp_path / "runs"), "cot",
                          "answer-only"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "unknown stage 'answer-only'" in out.stderr and "answer_only" in out.stderr
    assert not (tmp_path / "runs").exists()  # the valid first stage did not start either


def test_sweep_script_rejects_an_unknown_mode_before_running_anything(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MODES": "cot answer-only", "OUT_DIR": str(tmp_path / "out")}
    out = subprocess.run(["bash", "launch/sweep_gsm8k.sh", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 2
    assert "unknown mode 'answer-only'" in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def _preempted_cotjax(tmp_path):
    """A stand-in for `cotjax` that records its calls in tmp_path/calls and trains like a
    preempted run: it prints stopped_by_signal and exits 0, as `cotjax train` does on SIGTERM."""
    fake = tmp_path / "cotjax"
    fake.write_text(f'#!/bin/bash\necho "$1" >> {tmp_path / "calls"}\n'
                    'echo \'{"step": 5, "stopped_by_signal": true}\'\n')
    fake.chmod(0o755)
    return fake


def test_sweep_never_evaluates_a_training_stopped_by_a_signal(tmp_path):
    calls, fake = tmp_path / "calls", _preempted_cotjax(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "COTJAX": str(fake), "PYTHON": sys.executable,
           "MODES": "cot", "LRS": "1e-4", "EPOCHS": "1", "OUT_DIR": str(tmp_path / "out")}
    out = subprocess.run(["bash", "launch/sweep_gsm8k.sh", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=120, env=env)
    # No eval after the stop; the closing table (`cotjax viz sweep`) still runs.
    assert calls.read_text().split() == ["train", "viz"]
    assert "cot_lr1e-4_ep1: stopped by a signal before the end" in out.stderr
    assert "cot_lr1e-4_ep1: FAILED" in out.stdout
    assert not list((tmp_path / "out").glob("*_summary.json"))


def test_experiment_script_stops_after_a_training_stopped_by_a_signal(tmp_path):
    # The stage's evaluation and every later stage must not run.
    calls, fake = tmp_path / "calls", _preempted_cotjax(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "COTJAX": str(fake), "OUT_DIR": str(tmp_path / "out")}
    out = subprocess.run(["bash", "launch/experiment_gsm8k.sh", str(tmp_path / "runs"), "cot",
                          "base_zero_shot"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1
    assert calls.read_text().split() == ["train"]
    assert "cot: stopped by a signal before the end" in out.stderr
    assert not list((tmp_path / "out").glob("*_summary.json"))


def test_experiment_script_lets_an_interrupted_training_save(tmp_path):
    # A signal to the whole process group (preemption, Ctrl-C) reaches the log's `tee` too: the save
    # message must still be written (a dead tee would kill it with SIGPIPE before it saves).
    fake = tmp_path / "cotjax"
    fake.write_text(
        "#!/bin/bash\n"
        f"trap 'echo saving; touch {tmp_path}/saved; "
        "echo \"{\\\"step\\\": 5, \\\"stopped_by_signal\\\": true}\"; exit 0' INT TERM\n"
        f"touch {tmp_path}/started\n"
        "while true; do sleep 0.05; done\n")
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "COTJAX": str(fake), "OUT_DIR": str(tmp_path / "out")}
    proc = subprocess.Popen(["bash", "launch/experiment_gsm8k.sh", str(tmp_path / "runs"), "cot"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # not SIGINT: a shell started with `&` ignores it
    _, err = proc.communicate(timeout=30)
    assert (tmp_path / "saved").exists()
    assert "stopped_by_signal" in (tmp_path / "runs" / "cot" / "train.log").read_text()
    assert proc.returncode != 0 and not list((tmp_path / "out").glob("*_summary.json"))


def test_tpu_pod_accepts_a_config_argument():
    out = subprocess.run(["bash", "launch/tpu_pod.sh", "--tpu=t", "--zone=z", "--dry-run",
                          "--config=configs/gsm8k.py:recipe=full", "--workdir=gs://b/r"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "train\\ --config=configs/gsm8k.py:recipe=full" in out.stdout + out.stderr
    bad = subprocess.run(["bash", "launch/tpu_pod.sh", "--tpu=t", "--zone=z", "--dry-run",
                          "--config=configs/nope.py:recipe=full", "--workdir=gs://b/r"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "config configs/nope.py does not exist" in bad.stderr


def test_rft_rounds_never_evaluate_a_student_stopped_by_a_signal(tmp_path):
    calls, fake = tmp_path / "calls", _preempted_cotjax(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "COTJAX": str(fake), "OUT": str(tmp_path / "out")}
    out = subprocess.run(["bash", "launch/rft_rounds.sh", str(tmp_path / "teacher"),
                          str(tmp_path / "runs")], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 1
    assert calls.read_text().split() == ["sample", "distill", "train"]
    assert (f"round 1: training of {tmp_path}/runs/round1/student stopped by a signal; rerun to "
            "resume it") in out.stderr
    assert not list((tmp_path / "out").glob("*_summary.json"))


def test_rft_rounds_joins_the_human_chains_of_the_teachers_subset(tmp_path):
    """HUMAN_PROBLEMS=N reaches distill as the first N training problems (a CPU-subset teacher's
    own), PROBLEMS=M reaches the sampler; by default every human chain joins."""
    fake = tmp_path / "cotjax"
    fake.write_text(f'#!/bin/bash\necho "$@" >> {tmp_path / "calls"}\n'
                    'echo \'{"step": 5, "stopped_by_signal": true}\'\n')
    fake.chmod(0o755)
    for env_extra, want in (({"HUMAN_PROBLEMS": "1000", "PROBLEMS": "300"}, "1000"), ({}, "-1")):
        (tmp_path / "calls").unlink(missing_ok=True)
        env = {"PATH": "/usr/bin:/bin", "COTJAX": str(fake), "OUT": str(tmp_path / "out"),
               **env_extra}
        subprocess.run(["bash", "launch/rft_rounds.sh", str(tmp_path / "teacher"),
                        str(tmp_path / "runs")], capture_output=True, text=True, timeout=60,
                       env=env)
        calls = dict(line.split(" ", 1) for line in (tmp_path / "calls").read_text().splitlines())
        assert "--human=train" in calls["distill"]
        assert f"--config.data.max_examples={want}" in calls["distill"].split()
        assert f"--config.eval.max_examples={env_extra.get('PROBLEMS', '-1')}" in calls["sample"]


def test_rft_rounds_student_config_keeps_the_config_argument(tmp_path):
    """CONFIG with its own argument (a student of another family: model=gemma3-270m) gains
    train= after a ',' and still loads as that config; a bare CONFIG gains it after a ':'.
    The teacher samples with TEACHER_CONFIG (its own family's template), CONFIG by default."""
    from cotjax import defaults

    fake = tmp_path / "cotjax"
    fake.write_text(f'#!/bin/bash\necho "$@" >> {tmp_path / "calls"}\n'
                    'echo \'{"step": 5, "stopped_by_signal": true}\'\n')
    fake.chmod(0o755)
    for config, model, teacher in (
            ("configs/gsm8k.py:model=gemma3-270m", "gemma3-270m", "configs/gsm8k.py"),
            ("configs/gsm8k.py", "smollm2-135m-instruct", None)):
        (tmp_path / "calls").unlink(missing_ok=True)
        env = {"PATH": "/usr/bin:/bin", "COTJAX": str(fake), "OUT": str(tmp_path / "out"),
               "CONFIG": config, **({"TEACHER_CONFIG": teacher} if teacher else {})}
        subprocess.run(["bash", "launch/rft_rounds.sh", str(tmp_path / "teacher"),
                        str(tmp_path / "runs")], capture_output=True, text=True, timeout=60,
                       env=env)
        calls = dict(line.split(" ", 1) for line in (tmp_path / "calls").read_text().splitlines())
        spec = next(a for a in calls["train"].split() if a.startswith("--config="))
        c = defaults.load_config(spec.removeprefix("--config="))
        assert c.model == model
        assert c.data.train_path == str(tmp_path / "runs" / "round1" / "kept.jsonl")
        assert f"--config={teacher or config}" in calls["sample"].split()
        assert f"--config={config}" in calls["distill"].split()


def test_rft_rounds_hinted_pass_samples_the_teacher_with_its_config(tmp_path):
    """HINT=1: round 1's second sampling pass (the gold answer as a hint) also draws from the
    teacher, so it too uses TEACHER_CONFIG."""
    fake = tmp_path / "cotjax"
    fake.write_text(f'#!/bin/bash\necho "$@" >> {tmp_path / "calls"}\n'
                    'for a in "$@"; do case $a in --out=*kept.jsonl) '
                    'echo "{}" > "${a#--out=}.unsolved.jsonl";; esac; done\n'
                    'echo \'{"step": 5, "stopped_by_signal": true}\'\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "COTJAX": str(fake), "OUT": str(tmp_path / "out"), "HINT": "1",
           "CONFIG": "configs/gsm8k.py:model=gemma3-270m", "TEACHER_CONFIG": "configs/gsm8k.py"}
    subprocess.run(["bash", "launch/rft_rounds.sh", str(tmp_path / "teacher"),
                    str(tmp_path / "runs")], capture_output=True, text=True, timeout=60, env=env)
    calls = [line.split() for line in (tmp_path / "calls").read_text().splitlines()]
    assert [c[0] for c in calls] == ["sample", "distill", "sample", "distill", "train"]
    assert "--hint" in calls[2]
    for c in (calls[0], calls[2]):
        assert "--config=configs/gsm8k.py" in c


def _round_cotjax(tmp_path, stop_workdir="none"):
    """A fake cotjax for whole rounds: eval and distill write what the script reads, report
    pairs, and train is stopped by a signal for the workdir ending in `stop_workdir`."""
    fake = tmp_path / "cotjax"
    fake.write_text(f"""#!/bin/bash
echo "$*" >> {tmp_path / "calls"}
case $1 in
  eval) for a in "$@"; do case $a in --out=*) d=${{a#--out=}}; mkdir -p $d
        echo '{{"accuracy": 0.1, "steps_valid": 1, "chains_all_steps_valid": 1}}' > $d/summary.json
        echo '{{}}' > $d/predictions.jsonl;; esac; done;;
  distill) for a in "$@"; do case $a in --out=*) o=${{a#--out=}}
        echo '{{"funnel": {{"kept": 3}}, "problems": 2, "problems_with_kept_chain": 1, "records_written": 5}}' > $o.funnel.json;; esac; done;;
  report) echo '{{"a": "A", "b": "B", "n": 10, "correct_a": 1, "correct_b": 2, "only_a": 0, "only_b": 1, "mcnemar_p": 1.0}}';;
  train) case "$*" in *--workdir=*/{stop_workdir}\\ *) echo '{{"stopped_by_signal": true}}';;
         *) echo '{{"step": 5, "stopped_by_signal": false}}';; esac;;
esac
""")
    fake.chmod(0o755)
    return fake


def _rounds(tmp_path, fake, **env_extra):
    env = {"PATH": "/usr/bin:/bin", "COTJAX": str(fake), "OUT": str(tmp_path / "out"),
           "TEACHER_EVAL": "T", **env_extra}
    done = subprocess.run(["bash", "launch/rft_rounds.sh", str(tmp_path / "teacher"),
                           str(tmp_path / "runs")], capture_output=True, text=True, timeout=60, env=env)
    calls = tmp_path / "calls"
    return done, [line.split() for line in calls.read_text().splitlines()] if calls.exists() else []


def test_rft_rounds_control_trains_the_count_matched_control_and_pairs_it(tmp_path):
    """CONTROL=1: distill writes the control file, the control trains on it with the student's
    schedule and is evaluated the same way, and rounds.md, rounds.jsonl and comparison.json
    pair it with the student."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    done, lines = _rounds(tmp_path, _round_cotjax(tmp_path), CONTROL="1")
    assert done.returncode == 0, done.stderr
    assert [c[0] for c in lines[:6]] == ["sample", "distill", "train", "eval", "train", "eval"]
    assert "--control" in lines[1]
    (student, control) = (next(a for a in c if a.startswith("--config=")) for c in (lines[2], lines[4]))
    assert student.endswith(f"train={runs}/round1/kept.jsonl")
    assert control.endswith(f"train={runs}/round1/kept.jsonl.control.jsonl")
    assert f"--workdir={runs}/round1/control" in lines[4] and f"--out={runs}/round1/control_eval" in lines[5]
    assert lines[2][3:] == lines[4][3:] and lines[3][5:] == lines[5][5:]  # the same schedule and eval
    assert lines[-1] == ["report", "paired", f"{out}/round1_control_predictions.jsonl",
                         f"{out}/round1_predictions.jsonl"]
    assert "round1_predictions.jsonl vs its control:" in (out / "rounds.md").read_text()
    row = json.loads((out / "rounds.jsonl").read_text())
    assert row["control_accuracy"] == 0.1 and set(row["seconds"]) == {
        "sample", "select", "train", "eval", "control"}
    c = json.loads((out / "comparison.json").read_text())
    assert (c["control_accuracy"], c["only_student_vs_control"], c["kept_chains"]) == (0.1, 1, 3)


def test_rft_rounds_without_control_ignores_an_earlier_runs_control(tmp_path):
    """OUT may hold an earlier CONTROL=1 run's files: a run without CONTROL neither trains a
    control nor pairs the old one."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "round1_control_predictions.jsonl").write_text("{}\n")
    done, lines = _rounds(tmp_path, _round_cotjax(tmp_path))
    assert done.returncode == 0, done.stderr
    assert [c[0] for c in lines[:4]] == ["sample", "distill", "train", "eval"]
    assert not any("--control" in c or "control" in " ".join(c[:3]) for c in lines)
    assert "control" not in (out / "rounds.md").read_text()
    assert not any("control" in k for k in json.loads((out / "comparison.json").read_text()))
    assert "control_accuracy" not in json.loads((out / "rounds.jsonl").read_text())


def test_rft_rounds_control_stopped_by_a_signal_is_not_evaluated(tmp_path):
    done, lines = _rounds(tmp_path, _round_cotjax(tmp_path, stop_workdir="control"), CONTROL="1")
    assert done.returncode == 1
    assert [c[0] for c in lines] == ["sample", "distill", "train", "eval", "train"]
    assert f"training of {tmp_path}/runs/round1/control stopped by a signal" in done.stderr


@pytest.mark.parametrize("env, message", [
    ({"HUMAN": "0"}, "CONTROL=1 needs HUMAN=1"),
    ({"HUMAN_PROBLEMS": "1000"}, "HUMAN_PROBLEMS=1000, PROBLEMS=-1"),
    ({"HUMAN_PROBLEMS": "1000", "PROBLEMS": "1200"}, "HUMAN_PROBLEMS=1000, PROBLEMS=1200")])
def test_rft_rounds_control_refuses_missing_human_chains_before_sampling(tmp_path, env, message):
    done, lines = _rounds(tmp_path, _round_cotjax(tmp_path), CONTROL="1", **env)
    assert done.returncode == 2 and message in done.stderr and lines == []


def test_rft_rounds_needs_a_teacher():
    out = subprocess.run(["bash", "launch/rft_rounds.sh"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode != 0 and "usage: launch/rft_rounds.sh TEACHER_WORKDIR" in out.stderr


def test_faithfulness_script_evaluates_each_model_once_then_tabulates(tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "cotjax"
    fake.write_text(f"""#!/bin/bash
echo "$*" >> {calls}
for a in "$@"; do case $a in --out=*) mkdir -p "${{a#--out=}}"; echo {{}} > "${{a#--out=}}/summary.json";; esac; done
""")
    fake.chmod(0o755)
    run = tmp_path / "run"
    run.mkdir()
    env = {"PATH": "/usr/bin:/bin", "COTJAX": str(fake)}
    cmd = ["bash", "launch/faithfulness.sh", str(tmp_path / "out"), "7",
           "base=base:configs/gsm8k.py", f"cot={run}"]
    for _ in range(2):  # the second run finds both evals done
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("eval --config=configs/gsm8k.py "
                                                   "--config.eval.prompting=zero_shot_cot")
    assert lines[1].startswith(f"eval --workdir={run} --data=validation")
    for line in lines[:2]:
        assert "--config.eval.max_examples=7" in line and "--config.eval.faithfulness=all" in line
    assert lines[2] == lines[3] == (f"report faithfulness {tmp_path}/out/summary "
                                    f"base={tmp_path}/out/base cot={tmp_path}/out/cot")
    run.rmdir()  # a finished label's run directory is not needed again (runs/ may be gone)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and "cot: done" in out.stdout, out.stderr
    bad = subprocess.run(["bash", "launch/faithfulness.sh", str(tmp_path), "7", "x=/no/run"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert bad.returncode == 2 and "x: no run directory /no/run" in bad.stderr


def test_prm_experiment_runs_each_stage_once_in_order(tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "cotjax"
    fake.write_text(f"""#!/bin/bash
echo "$*" >> {calls}
""")
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "COTJAX": str(fake)}
    runs, out = tmp_path / "runs", tmp_path / "out"
    cmd = ["bash", "launch/prm_experiment.sh", str(runs), str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert first.returncode == 0, first.stderr
    lines = calls.read_text().splitlines()
    stages = [line.split()[0] for line in lines]
    assert stages == ["synthetic", "synthetic", "train", "export", "sample", "label-steps",
                      "train", "train", "sample", "rerank"]
    assert lines[5].endswith(f"--out={runs}/labels --max_chains=-1")
    assert f"--workdir={runs}/prm" in lines[6] and "--config.train.objective=prm" in lines[6]
    assert f"--config.model={runs}/policy_hf" in lines[7] and \
        f"--config.data.labels={runs}/labels" in lines[7] and "objective=orm" in lines[7]
    assert lines[-1] == (f"rerank --samples={runs}/eval_samples --prm={runs}/prm "
                         f"--orm={runs}/orm --out={out}")
    # a rerun skips every finished stage: only the problem files and the rerank again
    calls.unlink()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert second.returncode == 0 and "label_samples: done" in second.stdout
    assert [x.split()[0] for x in calls.read_text().splitlines()] == \
        ["synthetic", "synthetic", "rerank"]
    bad = subprocess.run(["bash", "launch/prm_experiment.sh"], capture_output=True, text=True,
                         timeout=30, env=env)
    assert bad.returncode != 0 and "usage: launch/prm_experiment.sh RUNS OUT" in bad.stderr
    # REWARD_OBJECTIVES=prm: no ORM trained, the rerank without one; other values refused
    calls.unlink()
    alone = subprocess.run(cmd[:2] + [str(tmp_path / "r2"), str(out)], capture_output=True,
                           text=True, timeout=60, env={**env, "REWARD_OBJECTIVES": "prm"})
    assert alone.returncode == 0, alone.stderr
    lines = calls.read_text().splitlines()
    assert [x.split()[0] for x in lines].count("train") == 2  # the policy and the PRM
    assert "objective=orm" not in "".join(lines) and "--orm" not in lines[-1]
    # free labels on every sampled chain, Monte Carlo labels on the first LABEL_CHAINS
    calls.unlink()
    free = {**env, "REWARD_DATA": f"{runs}/label_samples", "LABEL_CHAINS": "64",
            "REWARD_TAG": "_free"}
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env=free).returncode == 0
    lines = calls.read_text().splitlines()
    assert [x.split()[0] for x in lines] == ["synthetic", "synthetic", "train", "train",
                                              "rerank"]  # the labels stage was already done
    assert all(f"--config.data.labels={runs}/label_samples " in x for x in lines[2:4])
    assert lines[-1].startswith(f"rerank --samples={runs}/eval_samples --prm={runs}/prm_free")
    wrong = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                           env={**env, "REWARD_OBJECTIVES": "orm"})
    assert wrong.returncode != 0 and "REWARD_OBJECTIVES must be" in wrong.stderr


def test_calculator_experiment_needs_a_run(tmp_path):
    out = subprocess.run(["bash", "launch/calculator_experiment.sh"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode != 0 and "usage: launch/calculator_experiment.sh RUN OUT" in out.stderr
    out = subprocess.run(["bash", "launch/calculator_experiment.sh", str(tmp_path / "nope"),
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and f"no run directory {tmp_path / 'nope'}" in out.stderr


def test_gpu_session_checks_its_plan_then_packs_each_stage_it_had_time_for(tmp_path):
    calls, fake = tmp_path / "calls", tmp_path / "cotjax"
    fake.write_text(f"""#!/bin/bash
echo "$*" >> {calls}
for a in "$@"; do case $a in --out=*) mkdir -p "${{a#--out=}}"; echo {{}} > "${{a#--out=}}/summary.json";; esac; done
""")
    fake.chmod(0o755)
    (tmp_path / "runs" / "sweep" / "cot_lr2e-4_ep2").mkdir(parents=True)
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "COTJAX": str(fake), "RUNS": str(tmp_path / "runs"),
           "RESULTS": str(tmp_path / "results"), "OUT": str(out)}

    def session(*args, deadline="100"):
        return subprocess.run(["bash", "launch/gpu_session.sh", *args], capture_output=True,
                              text=True, timeout=60, env={**env, "DEADLINE": deadline})

    bad = session("run", "teacher", "bogus")  # a typo stops the plan before the teacher trains
    assert bad.returncode == 2 and "unknown stage 'bogus'" in bad.stderr
    assert not calls.exists() and not out.exists()
    short = session("run", "teacher", "faithfulness")  # 100 s left: neither stage fits
    assert short.returncode == 0, short.stderr
    assert "teacher: not started" in short.stdout and "(needs ~150 s)" in short.stdout
    assert "faithfulness: not started" in short.stdout and not calls.exists()
    prm = session("run", "prm")
    assert prm.returncode == 0 and "prm: not started" in prm.stdout and "(needs ~300 s)" in prm.stdout
    assert not list(out.iterdir())
    done = session("run", "faithfulness", deadline="1000")
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert lines[0].startswith(f"eval --workdir={tmp_path}/runs/sweep/cot_lr2e-4_ep2 ")
    assert "--config.eval.max_examples=500" in lines[0] and lines[1].startswith("report")
    packed = subprocess.run(["tar", "tzf", str(out / "faithfulness.tgz")], capture_output=True,
                            text=True, check=True).stdout
    assert "results/faithfulness/gpu/smollm2_cot/summary.json" in packed.splitlines()
    # A stage still running at the deadline is stopped and what it wrote comes back as partial,
    # after its training has saved: the fake takes 2 s to "checkpoint" on SIGTERM, after the
    # shells above it are gone.
    fake.write_text(fake.read_text() + """case $1 in eval)
  for a in "$@"; do case $a in --out=*) dir=${a#--out=};; esac; done
  trap 'sleep 2; echo saved > "$dir/checkpoint.txt"; exit 143' TERM
  sleep 30 & wait;;
esac
""")
    (out / "faithfulness.tgz").unlink()
    env.update(NEED_faithfulness="1", RESULTS=str(tmp_path / "results_cut"))
    cut = session("run", "faithfulness", deadline="3")
    assert cut.returncode == 0, cut.stderr
    assert "faithfulness: stopped (exit 124)" in cut.stdout and "to resume" in cut.stdout
    assert [p.name for p in out.iterdir()] == ["faithfulness.partial.tgz"]
    packed = subprocess.run(["tar", "tzf", str(out / "faithfulness.partial.tgz")],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert "results/faithfulness/gpu/smollm2_cot/checkpoint.txt" in packed
