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
