"""Memory math of a training run per device: weights, gradients, optimizer state, activations and
logits, for full fine-tuning, LoRA or QLoRA, on any mesh, without allocating anything.

    cotjax memory --config=configs/large.py:model=llama3.1-8b,method=qlora,hardware=gpu80

Weights, gradients and optimizer state are exact: the abstract parameters of the run's model
(`load.abstract_params`: quantised codes and scales, adapters) placed by the sharding rules on
the config's mesh, so each array counts its own shard. The trained parameters have float32
gradients and two float32 Adam moments. Activations are an estimate of what the backward pass
keeps (checked against XLA's compiled memory analysis on the CPU, `tests/test_memory.py`):

- remat: each layer's input (compute dtype), plus one layer recomputed at a time;
- otherwise every layer's weight-matmul outputs (the `dots_with_no_batch_dims_saveable` policy
  of `cotjax.model`) and its residual stream;
- attention probabilities of one block of queries (`model.Q_BLOCK`) at a time, float32;
- the logits, their softmax and gradient in float32, over the whole sequence or over one
  `train.loss_chunk` of positions.

Compilers fuse, reuse and pad buffers, so leave a margin (the tests accept a factor of 2 each way).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from cotjax import load, lora as lora_lib, model as model_lib, sharding as sharding_lib

GIB = 2**30


def _device_bytes(shapes, axes, mesh) -> float:
    """Bytes of one device's shards of a tree of ShapeDtypeStructs."""
    total = 0.0
    for s, a in zip(jax.tree.leaves(shapes), jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))):
        spec = sharding_lib.spec_for(a, s.shape, mesh)
        shards = math.prod(sharding_lib.axis_size(mesh, p) for p in spec if p is not None)
        total += math.prod(s.shape) * np.dtype(s.dtype).itemsize / shards
    return total


def _count(shapes) -> int:
    return sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))


def activation_bytes(cfg: model_lib.ModelConfig, rows: int, seq_len: int, remat: bool,
                     loss_chunk: int = 0) -> dict[str, float]:
    """Estimated bytes the backward pass keeps for `rows` rows of `seq_len` tokens on a device."""
    c = np.dtype(cfg.compute_dtype).itemsize
    D, N, K, H, F, V, L = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                           cfg.mlp_dim, cfg.vocab_size, cfg.num_layers)
    n = rows * seq_len
    dots = N * H + 2 * K * H + D + 3 * F  # q, k, v, o, gate, up, down outputs per token
    layer = n * (dots + 2 * D) * c  # one layer's saved matmul outputs and residual stream
    stack = L * n * D * c + layer if remat else L * layer
    q_block = model_lib.Q_BLOCK if seq_len % model_lib.Q_BLOCK == 0 else seq_len
    attention = 2 * rows * N * q_block * seq_len * 4  # scores and probabilities of one block
    positions = loss_chunk if 0 < loss_chunk < seq_len else seq_len
    logits = 3 * rows * positions * V * 4 if cfg.head == "lm" else 0
    return {"activations": float(stack + attention), "logits": float(logits)}


def estimate(config, mesh_shape: tuple[int, int, int] | None = None) -> dict:
    """Per-device memory (bytes) of training `config`'s model on `mesh_shape` (data, fsdp,
    tensor; default the config's mesh with -1 read as 1), with its LoRA settings."""
    from cotjax.defaults import TrainSpec

    spec = TrainSpec.from_config(config)
    cfg = model_config(config)
    shape = mesh_shape or tuple(max(int(config.mesh[a]), 1) for a in sharding_lib.MESH_AXES)
    mesh = jax.sharding.AbstractMesh(shape, sharding_lib.MESH_AXES)
    shapes, axes = load.abstract_params(cfg)
    trained, frozen = lora_lib.split(shapes, cfg.lora)
    t_axes, f_axes = lora_lib.split(axes, cfg.lora)
    trained_bytes = _device_bytes(trained, t_axes, mesh)
    f32 = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, np.float32), trained)
    grads = _device_bytes(f32, t_axes, mesh)
    data_parallel = shape[0] * shape[1]
    rows = max(int(config.data.batch_size) // data_parallel // spec.microbatches, 1)
    act = activation_bytes(cfg, rows, int(config.data.seq_len), spec.remat, spec.loss_chunk)
    plain = load.abstract_params(cfg.replace(lora=None))[0]
    out = {"params": _count(plain), "trained_params": _count(trained),
           "weights": trained_bytes + _device_bytes(frozen, f_axes, mesh),
           "gradients": grads, "optimizer": 2 * grads, **act,
           "rows_per_device": rows, "mesh": dict(zip(sharding_lib.MESH_AXES, shape))}
    out["total"] = sum(out[k] for k in ("weights", "gradients", "optimizer", "activations",
                                        "logits"))
    return out


def model_config(config) -> model_lib.ModelConfig:
    """The ModelConfig a run of `config` trains, read without weights: `config.model_arch` for
    a random model or a hub id (offline; configs/large.py gives its architectures), else the
    model's own config (a preset's GGUF metadata, a HF directory's config.json)."""
    from cotjax import weights

    overrides = load.dtype_overrides(config, bool(config.train.remat))
    arch = config.get("model_arch")
    if config.model == "random" or (arch and len(arch)
                                    and weights.resolve_source(config.model).kind == "hub"):
        cfg = load._random_model_config(config).replace(**overrides)
    else:
        cfg = model_lib.ModelConfig.from_hf(weights.read_config(config.model), **overrides)
    return cfg.replace(lora=lora_lib.LoraSpec.from_config(config.get("lora")))


def describe(est: dict) -> str:
    """One line of GiB per part."""
    parts = ("weights", "gradients", "optimizer", "activations", "logits", "total")
    return ", ".join(f"{k} {est[k] / GIB:.2f}" for k in parts) + " GiB per device"
