"""Two JAX processes on this machine (CPU, gloo collectives) train on one shared mesh, checkpoint,
and resume from the checkpoint they wrote together, started the way users start them: through
`launch/local.sh --processes=2`, which runs `cotjax train --config=... --workdir=...` per process
with the COTJAX_COORDINATOR / COTJAX_NUM_PROCESSES / COTJAX_PROCESS_ID variables."""

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from _train_utils import tiny_config, write_byte_tokenizer, write_config_file

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_pair(config_file: Path, workdir: Path, *overrides: str, during=None) -> str:
    """Both processes' output (one stream, as the launcher leaves it); fails unless both exit 0
    (the launcher waits for every process and exits with a failing one's status). `during`, if
    given, is called with the launcher's process while the pair runs."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # conftest's 8 devices would override --fake-devices=2
    cmd = ["bash", "launch/local.sh", f"--config={config_file}", f"--workdir={workdir}",
           "--processes=2", "--fake-devices=2", f"--port={_free_port()}", "--", *overrides]
    # Its own session, so a hang can be killed with both processes the launcher started.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        if during is not None:
            during(proc)
        out = proc.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("multi-process training timed out: " + proc.communicate()[0][-4000:])
    assert proc.returncode == 0, out[-4000:]
    return out


def _results(out: str) -> list[dict]:
    """The summary lines `cotjax train` prints (process 0 only) when a run ends."""
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"step"')]


def _checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _iterator_states(workdir: Path, step: int) -> dict:
    return json.loads((workdir / "checkpoints" / str(step) / "data" / "metadata").read_text())


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(tmp_path):
    tok_dir = write_byte_tokenizer(tmp_path / "bytes")
    config = tiny_config(tok_dir, steps=4, checkpoint_every=2, log_every=2)
    config.mesh.data = 2
    config.mesh.fsdp = 2  # parameters sharded across the two processes' devices
    config.mesh.tensor = 1
    config_file = write_config_file(config, tmp_path / "mp_config.py")
    workdir = tmp_path / "mp"

    out = _launch_pair(config_file, workdir)
    assert out.count("+ env COTJAX_COORDINATOR=") == 2  # the launcher started two processes
    assert "2 process(es)" in out and "mesh data=2 x fsdp=2" in out
    [result] = _results(out)
    assert result["step"] == 4 and result["train/loss"] is not None
    assert _checkpoint_steps(workdir) == [2, 4]
    data = _iterator_states(workdir, 4)
    assert data["process_count"] == 2 and len(data["states"]) == 2  # both iterators saved

    # Resume with more steps, passing the override through the launcher as a user would.
    out = _launch_pair(config_file, workdir, "--config.train.steps=6")
    assert out.count("resuming from checkpoint step 4") == 2  # every process resumed
    [result] = _results(out)
    assert result["step"] == 6
    assert 6 in _checkpoint_steps(workdir)
    assert len(_iterator_states(workdir, 6)["states"]) == 2


def _trainers(launcher: subprocess.Popen) -> list[int]:
    """The pids of the training processes the launcher started (its session's python ones)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[3]) == launcher.pid and any(b"python" in c for c in cmd[:1]) \
                and b"train" in cmd:
            pids.append(int(stat.parent.name))
    return sorted(pids)


@pytest.mark.slow
def test_a_sigterm_to_one_process_stops_both_at_one_step(tmp_path):
    """Preemption reaches one host: JAX's preemption service makes both processes stop at the
    same step, save one checkpoint together and exit 0; the run resumes from it."""
    import time

    tok_dir = write_byte_tokenizer(tmp_path / "bytes")
    config = tiny_config(tok_dir, steps=2000, checkpoint_every=0, log_every=1)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 1
    config_file = write_config_file(config, tmp_path / "mp_config.py")
    workdir = tmp_path / "mp"

    def preempt_one(launcher):
        deadline = time.monotonic() + 240
        metrics = workdir / "metrics.jsonl"
        while time.monotonic() < deadline:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        trainers = _trainers(launcher)
        assert len(trainers) == 2, trainers
        os.kill(trainers[1], signal.SIGTERM)  # process 1 only

    out = _launch_pair(config_file, workdir, during=preempt_one)
    [result] = _results(out)
    assert result["stopped_by_signal"] and 3 <= result["step"] < 2000
    assert _checkpoint_steps(workdir) == [result["step"]]
    assert len(_iterator_states(workdir, result["step"])["states"]) == 2

    out = _launch_pair(config_file, workdir, f"--config.train.steps={result['step'] + 2}")
    assert out.count(f"resuming from checkpoint step {result['step']}") == 2
    [again] = _results(out)
    assert again["step"] == result["step"] + 2 and not again["stopped_by_signal"]
