"""Memory math: weights and optimizer state exactly what the compiled training step takes as
arguments; activations, logits and gradients within a factor of 2 of XLA's temporaries; the
configs/large.py architectures have their published parameter counts."""

import jax
import numpy as np
import pytest

from cotjax import defaults, load, lora, memory, sharding, train
from cotjax.cli import main as cli_main
from cotjax.loss import make_objective

from _train_utils import tiny_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("remat,chunk,rank", [(False, 0, 0), (True, 64, 0), (True, 0, 8),
                                              (False, 64, 8)])
def test_estimate_matches_the_compiled_step(remat, chunk, rank):
    c = tiny_config("unused")
    c.model_arch.update(d_model=256, num_layers=4, num_heads=8, num_kv_heads=4, head_dim=32,
                        mlp_dim=1024, vocab_size=8192)
    c.data.batch_size, c.data.seq_len, c.mesh.data = 4, 256, 1
    c.train.remat, c.train.loss_chunk, c.lora.rank = remat, chunk, rank
    est = memory.estimate(c, (1, 1, 1))
    cfg = memory.model_config(c)
    mesh = sharding.make_mesh(type("M", (), dict(data=1, fsdp=1, tensor=1))(), jax.devices()[:1])
    trainer = train.Trainer(cfg, train.TrainSpec.from_config(c), mesh, 10,
                            make_objective("cot", chunk))
    batch = {k: jax.ShapeDtypeStruct((4, 256), np.int32)
             for k in ("inputs", "targets", "positions", "segment_ids", "kinds")}
    batch["weights"] = jax.ShapeDtypeStruct((4, 256), np.float32)
    frozen = lora.split(load.abstract_params(cfg)[0], cfg.lora)[1]
    compiled = trainer._step.lower(trainer.abstract_params, trainer.abstract_train, batch,
                                   frozen).compile().memory_analysis()
    batch_bytes = 6 * 4 * 256 * 4
    assert compiled.argument_size_in_bytes - batch_bytes == pytest.approx(
        est["weights"] + est["optimizer"], rel=1e-3)
    ratio = compiled.temp_size_in_bytes / (est["activations"] + est["logits"] + est["gradients"])
    assert 0.5 <= ratio <= 2.0, ratio


def test_large_architectures_have_their_published_sizes():
    sizes = {"llama3.1-8b": 8.03e9, "qwen2.5-7b": 7.62e9, "qwen3-8b": 8.19e9,
             "llama3.2-1b": 1.24e9, "qwen2.5-0.5b": 0.49e9, "gemma3-1b": 1.00e9}
    for name, n in sizes.items():
        config = defaults.load_config(str(ROOT / f"configs/large.py:model={name}"))
        assert memory.estimate(config)["params"] == pytest.approx(n, rel=0.01), name
    full = memory.estimate(defaults.load_config(
        str(ROOT / "configs/large.py:model=llama3.1-8b,method=full,hardware=gpu80")))
    qlora = memory.estimate(defaults.load_config(
        str(ROOT / "configs/large.py:model=llama3.1-8b,method=qlora,hardware=gpu80")))
    assert full["weights"] == pytest.approx(4 * full["params"], rel=1e-3)  # fp32 master
    assert full["optimizer"] == pytest.approx(8 * full["params"], rel=1e-3)
    # NF4 layer matrices (+ scales) and the bf16 embeddings; adapters and their Adam state
    assert qlora["weights"] < 0.7 * 2 * qlora["params"]
    assert qlora["trained_params"] < 0.01 * qlora["params"]


def test_memory_command_prints_the_parts(capsys):
    cli_main(["cotjax", "memory",
              f"--config={ROOT}/configs/large.py:model=qwen3-0.6b,method=lora,hardware=v5e-8"])
    line, blob = capsys.readouterr().out.strip().splitlines()
    assert line.endswith("GiB per device") and "optimizer" in line
    assert __import__("json").loads(blob)["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}


def test_large_config_arguments_are_checked():
    with pytest.raises(ValueError, match="model must be one of"):
        defaults.load_config(str(ROOT / "configs/large.py:model=llama9"))
    with pytest.raises(ValueError, match="hardware must be one of"):
        defaults.load_config(str(ROOT / "configs/large.py:hardware=tpu"))


def test_large_architectures_round_trip_through_hf_configs():
    """Each configs/large.py architecture is a valid ModelConfig whose transformers config.json
    reads back to itself (what a downloaded checkpoint's config gives)."""
    from cotjax.model import ModelConfig

    for spec in ("llama3.1-8b", "qwen2.5-7b", "qwen3-8b", "gemma3-12b", "llama3.2-1b"):
        cfg = memory.model_config(defaults.load_config(str(ROOT / f"configs/large.py:model={spec}")))
        cfg = cfg.replace(lora=None, layer_types=cfg.layer_types or ("full",) * cfg.num_layers)
        assert ModelConfig.from_hf(cfg.to_hf(), param_dtype=cfg.param_dtype,
                                   compute_dtype=cfg.compute_dtype, remat=cfg.remat,
                                   attention=cfg.attention) == cfg, spec


def test_the_docs_table_is_the_scripts_output():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "benchmarks/memory_math.py", "--markdown"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=True).stdout.strip()
    assert out in (ROOT / "docs/large_models.md").read_text()
