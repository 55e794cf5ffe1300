"""Workdirs and outputs on URLs (gs://...): everything a run writes goes through the epath layer,
tested offline with an in-memory filesystem standing in for GCS, and nothing lands in a local
directory named `gs:`. (Orbax's own array writes go to tensorstore's GCS driver, which cannot be
reached offline: the test checks that the manager is given the URL unchanged.)"""

import json
import os

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from cotjax import checkpoint, cli, metrics, paths


class FakeGCS(MemoryFileSystem):
    """fsspec's in-memory filesystem under the gs:// protocol (epath's GCS backend)."""

    protocol = ("gs", "gcs")
    root_marker = ""

    def __init__(self, *args, finalize_on_close=None, **kwargs):
        super().__init__(*args, **kwargs)


@pytest.fixture
def gcs(monkeypatch, tmp_path):
    for name in ("gs", "gcs"):
        fsspec.register_implementation(name, FakeGCS, clobber=True)
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem.cache_clear()
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs.clear()
    monkeypatch.chdir(tmp_path)  # a local `gs:` directory would appear here
    yield FakeGCS.store
    assert not os.path.exists(tmp_path / "gs:"), "a URL was written as a local path"


def test_metrics_go_to_the_url_and_a_resume_appends(gcs):
    writer = metrics.MetricWriter("gs://bucket/run")
    writer.write(1, {"loss": 2.0})
    writer.write(2, {"loss": float("nan")})
    assert "gs://bucket/run/metrics.jsonl" in gcs  # mirrored while the run goes on
    writer.close()
    again = metrics.MetricWriter("gs://bucket/run")  # a resumed run
    again.write(3, {"loss": 1.0})
    again.close()
    rows = [json.loads(line) for line in
            paths.path("gs://bucket/run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[1]["loss"] is None
    assert any(k.startswith("gs://bucket/run/tb/") for k in gcs)  # TensorBoard events too


def test_run_config_round_trips_on_a_url(gcs, tiny_run):
    config, model_cfg = checkpoint.read_run_config(tiny_run["workdir"])
    checkpoint.write_run_config("gs://bucket/run", config, model_cfg)
    config2, model_cfg2 = checkpoint.read_run_config("gs://bucket/run")
    assert config2.to_dict() == config.to_dict() and model_cfg2 == model_cfg


def test_the_checkpoint_manager_gets_the_url_unchanged(gcs, monkeypatch):
    seen = []
    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager",
                        lambda directory, **kw: seen.append(os.fspath(directory)))
    checkpoint.make_manager("gs://bucket/run")
    checkpoint.make_manager("runs/local")
    assert seen[0] == "gs://bucket/run/checkpoints"
    assert seen[1] == os.path.abspath("runs/local/checkpoints")


def test_export_to_a_url_refuses_to_mix_with_an_old_export(gcs, tiny_run, capsys):
    out = "gs://bucket/hf"
    cli.main(["cotjax", "export", f"--workdir={tiny_run['workdir']}", f"--out={out}"])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in paths.path(out).iterdir()}
    paths.write_text(f"{out}/model.safetensors.index.json", "{}")  # a stale file
    with pytest.raises(SystemExit):
        cli.main(["cotjax", "export", f"--workdir={tiny_run['workdir']}", f"--out={out}"])
    assert "pass --overwrite" in capsys.readouterr().err
    cli.main(["cotjax", "export", f"--workdir={tiny_run['workdir']}", f"--out={out}",
              "--overwrite"])
    assert not paths.path(f"{out}/model.safetensors.index.json").exists()
