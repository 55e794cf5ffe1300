"""Checkpoints: SIGKILL at a random step + restart == uninterrupted run; SIGTERM saves and exits;
best-k retention; export and loading for evaluation."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cotjax import checkpoint, cli, decode, load, train

from _train_utils import tiny_config, write_byte_tokenizer

SCRIPT = str(Path(__file__).with_name("_train_utils.py"))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_byte_tokenizer(tmp_path_factory.mktemp("tok") / "bytes")


def _launch(config, workdir: Path) -> subprocess.Popen:
    cfg_path = workdir.parent / f"{workdir.name}.json"
    cfg_path.write_text(config.to_json())
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen([sys.executable, SCRIPT, str(cfg_path), str(workdir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finished_steps(workdir: Path) -> list[int]:
    d = workdir / checkpoint.CKPT_DIR
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _params(workdir: Path, step=None):
    model, *_ = load.load_run_model(workdir, step)
    from cotjax.weights import model_params
    return model_params(model)


def test_sigkill_then_restart_matches_uninterrupted_run(tok_dir, tmp_path):
    steps = 40
    config = tiny_config(tok_dir, steps=steps, checkpoint_every=3, keep=2, log_every=5)
    reference = tmp_path / "reference"
    train.train(config, reference)

    killed = tmp_path / "killed"
    proc = _launch(config, killed)
    deadline = time.time() + 240
    while not _finished_steps(killed) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert _finished_steps(killed), proc.communicate()[0][-3000:]
    time.sleep(random.uniform(0.0, 1.0))  # a random step between the first checkpoint and the end
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the run ended before it was killed (rc {proc.returncode}); {out[-2000:]}")
    at_kill = _finished_steps(killed)
    assert at_kill and at_kill[-1] < steps

    proc = _launch(config, killed)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming from checkpoint step {at_kill[-1]}" in out
    assert _finished_steps(killed)[-1] == steps
    ref, got = _params(reference), _params(killed)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_sigterm_saves_and_exits_cleanly(tok_dir, tmp_path):
    config = tiny_config(tok_dir, steps=100000, checkpoint_every=0, log_every=50)
    workdir = tmp_path / "term"
    proc = _launch(config, workdir)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
            metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    result = json.loads(out.split("RESULT ")[-1].splitlines()[0])
    assert result["stopped"] and 0 < result["step"] < 100000
    assert _finished_steps(workdir) == [result["step"]]


def test_best_checkpoint_kept_and_export(tok_dir, tmp_path):
    workdir = tmp_path / "best"
    config = tiny_config(tok_dir, steps=8, checkpoint_every=2, eval_every=2, keep=1,
                         keep_best=1, lr=3e-3)
    train.train(config, workdir)
    kept = _finished_steps(workdir)
    assert kept[-1] == 8 and len(kept) <= 2
    manager = checkpoint.make_manager(workdir, read_only=True)
    metrics = {s: manager.metrics(s) for s in kept}
    assert all(m is not None for m in metrics.values()), metrics
    # the lowest validation loss among all evaluated steps is kept
    val = {r["step"]: r["val/loss"] for r in map(json.loads, (workdir / "metrics.jsonl").open())
           if "val/loss" in r}
    assert min(val, key=val.get) in kept

    model, cfg, tokenizer, run_config = load.load_run_model(workdir)
    assert run_config.train.steps == 8 and cfg.d_model == 32
    base, *_ = load.load_run_model(workdir, "base")
    from cotjax.weights import model_params
    assert not np.allclose(model_params(base)["layers/wq"], model_params(model)["layers/wq"])

    cli.main(["cotjax", "export", f"--workdir={workdir}", f"--out={tmp_path / 'hf'}"])
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (tmp_path / "hf" / name).is_file(), name
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    import torch
    ids = np.array([[1, 40, 41, 42, 43]])
    ours = np.asarray(model(ids, np.arange(5)[None])[0])
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    # ... and the same greedy text (the exported generation config carries the EOS ids).
    prompt = tokenizer("Start with 7. Add 5. What is the result?").input_ids
    [mine] = decode.generate_text(model, tokenizer, [prompt], max_new_tokens=16)
    with torch.no_grad():
        g = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16)
    assert mine.text == tokenizer.decode(g[0, len(prompt):], skip_special_tokens=True)


def test_manager_keeps_last_k_and_best_by_validation_loss(tmp_path):
    manager = checkpoint.make_manager(tmp_path, keep=1, keep_best=1, async_save=False)
    params = {"w": np.ones(3, np.float32)}
    for step, val in zip((1, 2, 3, 4), (3.0, 1.0, 2.0, 4.0)):
        checkpoint.save(manager, step, params, {"step": np.int32(step)}, {"pos": step},
                        metrics={checkpoint.BEST_METRIC: val})
    manager.close()
    assert _finished_steps(tmp_path) == [2, 4]  # best (val 1.0) and latest
    manager = checkpoint.make_manager(tmp_path, keep=1, keep_best=1, async_save=False)
    assert manager.latest_step() == 4 and manager.best_step() == 2
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    abstract_train = {"step": jax.ShapeDtypeStruct((), np.int32)}
    p, t, data = checkpoint.restore(manager, 2, abstract, abstract_train)
    assert int(t["step"]) == 2 and data == {"pos": 2}


def test_unfinished_saves_are_gone_before_the_manager_returns(tmp_path, capsys):
    """A killed run's `<step>.orbax-checkpoint-tmp` trees are deleted before make_manager
    returns, so the two managers of a restart never delete the same tree at once (the race
    that failed the SIGKILL test in CI); finished steps stay."""
    manager = checkpoint.make_manager(tmp_path, keep=3, async_save=False)
    checkpoint.save(manager, 3, {"w": np.ones(3, np.float32)}, {"step": np.int32(3)}, {"pos": 3})
    manager.close()
    root = tmp_path / checkpoint.CKPT_DIR
    for step in (6, 9):  # an Orbax-shaped unfinished save: many small files in nested dirs
        for d in range(40):
            leaf = root / f"{step}.orbax-checkpoint-tmp" / "params" / "ocdbt.process_0" / f"d{d}"
            leaf.mkdir(parents=True)
            for f in range(25):
                (leaf / f"f{f}").write_bytes(b"x" * 64)
    for attempt in range(2):  # as train._start_or_resume: a manager, closed, then another
        manager = checkpoint.make_manager(tmp_path, keep=3)
        assert sorted(p.name for p in root.iterdir()) == ["3"], attempt
        assert manager.latest_step() == 3
        manager.close()
    assert "removed 2 unfinished checkpoint save(s)" in capsys.readouterr().out
    # read-only managers (evaluation beside a running training) never delete anything
    (root / "12.orbax-checkpoint-tmp").mkdir()
    checkpoint.make_manager(tmp_path, read_only=True).close()
    assert (root / "12.orbax-checkpoint-tmp").exists()
