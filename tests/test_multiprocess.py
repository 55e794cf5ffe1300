"""Two JAX processes on this machine (CPU, gloo collectives) train on one shared mesh, checkpoint,
and resume from the checkpoint they wrote together."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from _train_utils import tiny_config, write_byte_tokenizer

SCRIPT = str(Path(__file__).with_name("_train_utils.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_pair(config, workdir: Path) -> list[str]:
    cfg_path = workdir.parent / "mp_config.json"
    cfg_path.write_text(config.to_json())
    port = _free_port()
    procs = []
    for i in range(2):
        env = dict(os.environ,
                   PYTHONPATH=str(Path(__file__).resolve().parents[1]),
                   XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   JAX_PLATFORMS="cpu",
                   COTJAX_COORDINATOR=f"127.0.0.1:{port}",
                   COTJAX_NUM_PROCESSES="2", COTJAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, SCRIPT, str(cfg_path), str(workdir)],
                                      env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("multi-process training timed out")
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _result(out: str) -> dict:
    return json.loads(out.split("RESULT ")[-1].splitlines()[0])


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(tmp_path):
    tok_dir = write_byte_tokenizer(tmp_path / "bytes")
    config = tiny_config(tok_dir, steps=4, checkpoint_every=2, log_every=2)
    config.mesh.data = 2
    config.mesh.fsdp = 2  # parameters sharded across the two processes' devices
    config.mesh.tensor = 1
    workdir = tmp_path / "mp"
    outs = _run_pair(config, workdir)
    assert "2 process(es)" in outs[0]
    results = [_result(o) for o in outs]
    assert [r["step"] for r in results] == [4, 4]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                  if p.name.isdigit()) == [2, 4]
    data = json.loads((workdir / "checkpoints" / "4" / "data" / "metadata").read_text())
    assert data["process_count"] == 2 and len(data["states"]) == 2  # both iterators saved

    config.train.steps = 6
    outs = _run_pair(config, workdir)
    assert all("resuming from checkpoint step 4" in o for o in outs)
    assert [_result(o)["step"] for o in outs] == [6, 6]
    assert results[0]["loss"] is not None
