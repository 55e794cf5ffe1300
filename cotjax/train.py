"""Sharded, jitted CoT fine-tuning: loss, train step, loop, metrics, resume.

    cotjax train --config=configs/quickstart.py --workdir=runs/quick [--config.train.steps=...]

The train state is a plain pytree, `{"params": ..., "train": {...}}`, where params is the NNX
decoder's pure dict (`nnx.to_pure_dict`) and `train` holds the optax state, the step, the RNG key
and non-finite counters. Shardings are read off the abstract tree (`jax.eval_shape`) through the
logical-axis rules of `cotjax.sharding`; the jitted step states its in/out shardings and donates
the state.

Loss: per weighted token over the global batch (see `cotjax.tokenize`),

    loss = sum_{b,t} w[b,t] * ce[b,t] / sum_{b,t} w[b,t]

computed exactly under gradient accumulation: the micro-batches' sums are added before dividing.
Chain and answer tokens are told apart by the pipeline's per-token `kinds` array (0 none,
1 chain, 2 answer and EOS), so the metrics report the chain and the answer loss separately.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from cotjax import checkpoint as ckpt_lib
from cotjax import evaluate
from cotjax import model as model_lib
from cotjax import sharding as sharding_lib
from cotjax.tokenize import KIND_ANSWER, KIND_CHAIN

STAT_KEYS = ("wce", "w", "chain_ce", "chain_n", "answer_ce", "answer_n", "answer_correct",
             "tokens", "nonpad")

# ----------------------------------------------------------------------------------------------
# Multi-host start-up.


def _distributed_is_initialized() -> bool:
    try:
        from jax._src import distributed
        return distributed.global_state.client is not None
    except Exception:  # pragma: no cover - private API moved
        return False


def maybe_initialize_distributed() -> bool:
    """Join a multi-process run before JAX starts its backends; True if one was joined.

    Explicit: COTJAX_COORDINATOR=host:port, COTJAX_NUM_PROCESSES, COTJAX_PROCESS_ID (CPU
    processes use gloo collectives). Otherwise JAX's auto-detection, but only on a multi-host
    TPU slice or under SLURM / Open MPI with more than one task. A lone process does nothing.
    """
    if _distributed_is_initialized():
        return True
    env = os.environ
    if env.get("COTJAX_COORDINATOR"):
        missing = [k for k in ("COTJAX_NUM_PROCESSES", "COTJAX_PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(f"COTJAX_COORDINATOR is set but {', '.join(missing)} is not")
        if env.get("JAX_PLATFORMS", "").startswith("cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=env["COTJAX_COORDINATOR"],
                                   num_processes=int(env["COTJAX_NUM_PROCESSES"]),
                                   process_id=int(env["COTJAX_PROCESS_ID"]))
        return True
    tpu_hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    multi_tpu = len([h for h in tpu_hosts.split(",") if h]) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in env
    slurm = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env
    mpi = int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
    if multi_tpu or slurm or mpi:
        jax.distributed.initialize()
        return True
    return False


# ----------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """The `train` section of a config, with defaults (see configs/base.py)."""

    steps: int = -1  # optimizer steps; -1: as many as data.num_epochs gives
    lr: float = 1e-5
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant
    end_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global norm; <= 0: off
    microbatches: int = 1  # gradient accumulation: the global batch in this many pieces
    remat: bool = False
    on_nonfinite: str = "stop"  # stop | skip
    log_every: int = 10
    eval_every: int = 0  # <= 0: only at the end
    eval_batches: int = -1  # -1: the whole validation split
    checkpoint_every: int = 0  # <= 0: only at the end (and on SIGTERM/SIGINT)
    keep: int = 2
    keep_best: int = 1
    async_checkpoint: bool = True
    peak_flops: float = 0.0  # FLOP/s of the whole job for MFU; 0: measured (CPU) or a table
    progress: bool = True
    eval_at_end: bool = False  # cotjax.evaluate.run_eval(config, workdir, step, out=workdir/eval)

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"train.schedule must be cosine|linear|constant, got {self.schedule!r}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"train.on_nonfinite must be stop|skip, got {self.on_nonfinite!r}")
        if self.microbatches < 1:
            raise ValueError(f"train.microbatches must be >= 1, got {self.microbatches}")

    @classmethod
    def from_config(cls, config) -> TrainSpec:
        section = config.get("train") or {}
        section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown train config keys {unknown}; known: {sorted(known)}")
        return cls(**section)


def resolve_dtype(name: str) -> str:
    """'auto': bfloat16 on accelerators, float32 on CPU."""
    if name == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return name


# ----------------------------------------------------------------------------------------------
# Model, tokenizer and optimizer.


def load_tokenizer_for(config):
    """The tokenizer of a config: `config.tokenizer` (a HF tokenizer directory) if set, else the
    model's own."""
    tok = config.get("tokenizer", "")
    if tok:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tok)
    from cotjax import weights

    return weights.load_tokenizer(config.model)


def _random_model_config(config):
    arch = config.get("model_arch")
    if not arch:
        raise ValueError("config.model='random' needs config.model_arch (ModelConfig fields)")
    arch = arch.to_dict() if hasattr(arch, "to_dict") else dict(arch)
    arch.setdefault("rope", {"theta": 10000.0})
    arch.setdefault("norm_eps", 1e-5)
    return ckpt_lib.model_config_from_dict(arch)


def model_config_overrides(config, spec: TrainSpec | None = None) -> dict:
    out = dict(param_dtype=resolve_dtype(config.param_dtype),
               compute_dtype=resolve_dtype(config.compute_dtype))
    if spec is not None:
        out["remat"] = spec.remat
    return out


def load_base_model(config, mesh=None, spec: TrainSpec | None = None):
    """(Decoder, ModelConfig) the run starts from, each parameter placed by the rules table."""
    from cotjax import weights

    overrides = model_config_overrides(config, spec)
    if config.model == "random":
        cfg = _random_model_config(config).replace(**overrides)
        params = init_random_params(cfg, int(config.seed), mesh)
        return nnx.merge(nnx.graphdef(model_lib.abstract(cfg)), params), cfg
    hf, tensors = weights.read_checkpoint(config.model)
    cfg = model_lib.ModelConfig.from_hf(hf, **overrides)
    params = weights.hf_to_params(tensors, cfg, source=config.model)
    del tensors
    shardings = None
    if mesh is not None:
        dims = logical_dims(cfg)
        fn = sharding_lib.logical_sharding(mesh)
        shardings = lambda axes: fn(axes, tuple(dims[a] for a in axes))  # noqa: E731
    return weights.model_from_params(cfg, params, shardings), cfg


def logical_dims(cfg) -> dict[str, int]:
    return {"vocab": cfg.vocab_size, "embed": cfg.d_model, "heads": cfg.num_heads,
            "kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "mlp": cfg.mlp_dim,
            "layers": cfg.num_layers}


def abstract_params(cfg):
    """(params ShapeDtypeStructs, logical axes) pure dicts of a decoder."""
    state = nnx.state(model_lib.abstract(cfg))
    shapes = nnx.to_pure_dict(state)
    axes = nnx.to_pure_dict(jax.tree.map(lambda v: v.logical_axes, state,
                                         is_leaf=lambda v: isinstance(v, nnx.Variable)))
    return shapes, axes


def init_random_params(cfg, seed: int, mesh=None):
    """Random params, initialised under jit straight into their shardings (nanodo style)."""
    shapes, axes = abstract_params(cfg)
    init = lambda: nnx.to_pure_dict(nnx.state(model_lib.create(cfg, seed)))  # noqa: E731
    if mesh is None:
        return jax.jit(init)()
    return jax.jit(init, out_shardings=sharding_lib.param_shardings(shapes, axes, mesh))()


_NO_DECAY = re.compile(r"(norm$)|(^b[a-z]?$)|(^b_)")


def decay_mask(params) -> Any:
    """True where weight decay applies: matrices; not norms, not biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not _NO_DECAY.search(str(getattr(path[-1], "key", path[-1]))), params)


def make_schedule(spec: TrainSpec, total_steps: int) -> optax.Schedule:
    warm = max(int(spec.warmup_steps), 0)
    decay = max(total_steps - warm, 1)
    end = spec.lr * spec.end_lr_fraction
    if spec.schedule == "cosine":
        main = optax.cosine_decay_schedule(spec.lr, decay, alpha=spec.end_lr_fraction)
    elif spec.schedule == "linear":
        main = optax.linear_schedule(spec.lr, end, decay)
    else:
        main = optax.constant_schedule(spec.lr)
    if warm == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, spec.lr, warm), main], [warm])


def make_optimizer(spec: TrainSpec, total_steps: int):
    schedule = make_schedule(spec, total_steps)
    parts = []
    if spec.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(spec.grad_clip))
    parts.append(optax.adamw(schedule, b1=spec.b1, b2=spec.b2, eps=spec.eps,
                             weight_decay=spec.weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule


# ----------------------------------------------------------------------------------------------
# Loss.


def loss_sums(logits_BTV, targets_BT, weights_BT, kinds_BT, segment_ids_BT):
    """Token sums of one (micro-)batch: weighted CE, weights, chain/answer CE and counts,
    correct answer tokens, tokens and non-padding tokens."""
    logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    tgt_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    ce_BT = logz_BT - tgt_BT
    # A target is predicted when its logit is the maximum (a tie counts as correct): cheaper
    # than comparing with argmax, whose variadic reduce XLA CPU does not vectorise.
    hit_BT = tgt_BT >= jnp.max(logits_BTV, axis=-1)
    chain = (kinds_BT == KIND_CHAIN).astype(jnp.float32)
    answer = (kinds_BT == KIND_ANSWER).astype(jnp.float32)
    return {
        "wce": jnp.sum(weights_BT * ce_BT),
        "w": jnp.sum(weights_BT),
        "chain_ce": jnp.sum(chain * ce_BT),
        "chain_n": jnp.sum(chain),
        "answer_ce": jnp.sum(answer * ce_BT),
        "answer_n": jnp.sum(answer),
        "answer_correct": jnp.sum(answer * hit_BT),
        "tokens": jnp.asarray(targets_BT.size, jnp.float32),
        "nonpad": jnp.sum((segment_ids_BT != 0).astype(jnp.float32)),
    }


def model_sums(graphdef, params, batch):
    model = nnx.merge(graphdef, params)
    logits, _ = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    return loss_sums(logits, batch["targets"], batch["weights"], batch["kinds"],
                     batch["segment_ids"])


def _normalised(sums):
    return sums["wce"] / jnp.maximum(sums["w"], 1e-9)


def loss_and_grads(graphdef, params, batch, microbatches: int = 1, batch_spec=None):
    """(token sums, gradient of sum(w*ce) / sum(w)) over the batch, accumulated over
    `microbatches` pieces; exact: sums are added before dividing."""
    def sums_fn(p, mb):
        s = model_sums(graphdef, p, mb)
        return s["wce"], s

    grad_fn = jax.grad(sums_fn, has_aux=True)
    if microbatches == 1:
        grads, sums = grad_fn(params, batch)
    else:
        def split(x):  # row b goes to micro-batch b % M: every device feeds every micro-batch
            B = x.shape[0]
            y = x.reshape(B // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)
            if batch_spec is not None:
                y = jax.lax.with_sharding_constraint(y, batch_spec)
            return y

        mbs = {k: split(v) for k, v in batch.items()}

        def body(carry, mb):
            g, s = carry
            g2, s2 = grad_fn(params, mb)
            return (jax.tree.map(jnp.add, g, g2), jax.tree.map(jnp.add, s, s2)), None

        zeros_g = jax.tree.map(jnp.zeros_like, params)
        zeros_s = {k: jnp.zeros((), jnp.float32) for k in STAT_KEYS}
        (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s), mbs)
    denom = jnp.maximum(sums["w"], 1e-9)
    grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
    return sums, grads


# ----------------------------------------------------------------------------------------------
# The data.


class RunData:
    """The training and validation batches of a config for this process."""

    def __init__(self, config):
        from cotjax.tokenize import EncodeSpec

        EncodeSpec.from_config(config.data)  # fail early on invalid loss weights
        self.config = copy.deepcopy(config)

    def train_iterator(self, tokenizer):
        from cotjax import pipeline

        return pipeline.make_train_iterator(self.config, tokenizer, "train")

    def count_batches(self, tokenizer) -> int:
        """Batches per process in `data.num_epochs` epochs (finite runs), the minimum over
        processes."""
        from cotjax import pipeline

        ds, _ = pipeline.make_train_dataset(self.config, tokenizer, "train")
        n = sum(1 for _ in ds)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            n = int(np.min(multihost_utils.process_allgather(np.int32(n))))
        return n

    def validation_batches(self, tokenizer, limit: int = -1) -> list[dict[str, np.ndarray]]:
        """The validation split, one pass, unshuffled; every process gets as many batches
        (processes short of batches get empty padding ones)."""
        from cotjax import pipeline

        cfg = copy.deepcopy(self.config)
        with cfg.unlocked():
            cfg.data.num_epochs = 1
            cfg.data.shuffle = False
        if cfg.data.validation_size <= 0:
            return []
        ds, _ = pipeline.make_train_dataset(cfg, tokenizer, "validation")
        batches = []
        for b in ds:
            if 0 <= limit <= len(batches):
                break
            batches.append(b)
        n = len(batches)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            n = int(np.max(multihost_utils.process_allgather(np.int32(n))))
        if batches and len(batches) < n:
            empty = {k: np.zeros_like(v) for k, v in batches[0].items()}
            batches += [empty] * (n - len(batches))
        return batches


# ----------------------------------------------------------------------------------------------
# FLOPs and MFU.


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (matmul parameters, the output projection included, the
    embedding lookup not) + 12 L N_heads H T for attention scores and values (PaLM's count)."""
    D, N, K, H, F, V, L = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                           cfg.mlp_dim, cfg.vocab_size, cfg.num_layers)
    per_layer = D * N * H + 2 * D * K * H + N * H * D + 3 * D * F
    n_matmul = L * per_layer + D * V
    return 6.0 * n_matmul + 12.0 * L * N * H * seq_len


# Dense bf16 peak FLOP/s per device of common accelerators (for MFU; override train.peak_flops).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
              "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
              "TPU v6": 918e12}


def measure_matmul_flops(n: int = 2048, reps: int = 5, dtype=jnp.float32) -> float:
    """FLOP/s of an n x n matrix product on the default device (best of `reps`)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def peak_flops(spec: TrainSpec) -> float:
    """Peak FLOP/s of the whole job: train.peak_flops, a table lookup, or (CPU) measured."""
    if spec.peak_flops > 0:
        return float(spec.peak_flops)
    dev = jax.devices()[0]
    if dev.platform == "cpu":  # the fake CPU devices of a process share its cores
        return measure_matmul_flops() * jax.process_count()
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in dev.device_kind.lower():
            return flops * jax.device_count()
    logging.warning("unknown device %s: set train.peak_flops for MFU", dev.device_kind)
    return float("nan")


# ----------------------------------------------------------------------------------------------
# The trainer: shardings, jitted step and eval.


class Trainer:
    """The jitted pieces of a run for one model config, optimizer and mesh."""

    def __init__(self, cfg, spec: TrainSpec, mesh, total_steps: int):
        self.cfg, self.spec, self.mesh = cfg, spec, mesh
        self.total_steps = total_steps
        self.graphdef = nnx.graphdef(model_lib.abstract(cfg))
        self.tx, self.schedule = make_optimizer(spec, total_steps)
        shapes, self.logical_axes = abstract_params(cfg)
        self.param_shardings = sharding_lib.param_shardings(shapes, self.logical_axes, mesh)
        rep = sharding_lib.replicated(mesh)
        abstract_opt = jax.eval_shape(self.tx.init, shapes)
        opt_shardings = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract_opt, self.param_shardings,
            transform_non_params=lambda _: rep, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
        self.train_shardings = {"opt_state": opt_shardings, "step": rep, "rng": rep,
                                "skipped": rep, "first_bad": rep}
        self.abstract_params = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
            self.param_shardings)
        abstract_train = {"opt_state": abstract_opt,
                          "step": jax.ShapeDtypeStruct((), jnp.int32),
                          "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
                          "skipped": jax.ShapeDtypeStruct((), jnp.int32),
                          "first_bad": jax.ShapeDtypeStruct((), jnp.int32)}
        self.abstract_train = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_train,
            self.train_shardings)
        self.batch_sharding = sharding_lib.batch_sharding(mesh)
        self.trace_count = 0
        micro_spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            None, sharding_lib.RULES["batch"]))
        state_sh = (self.param_shardings, self.train_shardings)
        self._step = jax.jit(self._step_fn, in_shardings=(*state_sh, self.batch_sharding),
                             out_shardings=(*state_sh, rep), donate_argnums=(0, 1))
        self._micro_spec = micro_spec
        self._eval = jax.jit(self._eval_fn, in_shardings=(self.param_shardings, self.batch_sharding),
                             out_shardings=rep)
        self._grads = jax.jit(self._grads_fn, in_shardings=(self.param_shardings, self.batch_sharding),
                              out_shardings=(rep, self.param_shardings))
        self._init_opt = jax.jit(self.tx.init, in_shardings=(self.param_shardings,),
                                 out_shardings=opt_shardings)

    # -- pure functions under jit --

    def _grads_fn(self, params, batch):
        return loss_and_grads(self.graphdef, params, batch, self.spec.microbatches,
                              self._micro_spec if self.spec.microbatches > 1 else None)

    def _step_fn(self, params, train, batch):
        self.trace_count += 1  # Python side effect: runs once per trace
        sums, grads = self._grads_fn(params, batch)
        loss = _normalised(sums)
        gnorm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)

        def update(params, opt_state):
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        # A non-finite step leaves parameters and optimizer state as they were. A cond rather
        # than a select of new against old: the select read and wrote every parameter and both
        # Adam moments once more per step (~0.24 s of a 7 s SmolLM2 step on the CPU).
        new_params, new_opt = jax.lax.cond(ok, update, lambda p, o: (p, o), params,
                                           train["opt_state"])
        step = train["step"]
        new_train = {
            "opt_state": new_opt,
            "step": step + 1,
            "rng": jax.random.key_data(jax.random.fold_in(
                jax.random.wrap_key_data(train["rng"]), step)),
            "skipped": train["skipped"] + (~ok).astype(jnp.int32),
            "first_bad": jnp.where((train["first_bad"] < 0) & ~ok, step + 1, train["first_bad"]),
        }
        metrics = {**sums, "grad_norm": gnorm, "lr": self.schedule(step),
                   "ok": ok, "loss": loss}
        return new_params, new_train, metrics

    def _eval_fn(self, params, batch):
        return model_sums(self.graphdef, params, batch)

    # -- host API --

    def init_train_state(self, params, seed: int) -> dict:
        rep = sharding_lib.replicated(self.mesh)
        put = lambda x: jax.device_put(x, rep)  # noqa: E731
        return {"opt_state": self._init_opt(params),
                "step": put(np.int32(0)),
                "rng": put(np.asarray(jax.random.key_data(jax.random.key(seed)), np.uint32)),
                "skipped": put(np.int32(0)), "first_bad": put(np.int32(-1))}

    def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return sharding_lib.shard_batch(batch, self.mesh)

    def step(self, params, train, batch):
        """One optimizer step; donates params and train."""
        return self._step(params, train, self.shard_batch(batch))

    def grads(self, params, batch):
        return self._grads(params, self.shard_batch(batch))

    def evaluate(self, params, batches) -> dict[str, float]:
        total = None
        for b in batches:
            sums = self._eval(params, self.shard_batch(b))
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        if total is None:
            return {}
        return summarize_sums(jax.device_get(total))


def summarize_sums(s: dict) -> dict[str, float]:
    div = lambda a, b: float(a) / float(b) if float(b) > 0 else float("nan")  # noqa: E731
    return {"loss": div(s["wce"], s["w"]), "chain_loss": div(s["chain_ce"], s["chain_n"]),
            "answer_loss": div(s["answer_ce"], s["answer_n"]),
            "answer_acc": div(s["answer_correct"], s["answer_n"]),
            "nonpad_frac": div(s["nonpad"], s["tokens"])}


# ----------------------------------------------------------------------------------------------
# Metrics output.


class MetricWriter:
    """metrics.jsonl + TensorBoard events in the workdir (process 0 writes)."""

    def __init__(self, workdir: Path):
        self.active = jax.process_index() == 0
        self.tb = None
        if self.active:
            workdir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(workdir / "metrics.jsonl", "a")
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(str(workdir / "tb"))
            except ImportError:  # pragma: no cover
                logging.warning("tensorboardX is not installed: no TensorBoard events")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self):
        if self.active:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


class _Interval:
    """Aggregates per-step metric sums between two log points."""

    def __init__(self):
        self.reset(time.perf_counter())

    def reset(self, now: float):
        self.t0, self.pending, self.steps = now, [], 0

    def add(self, metrics):
        self.pending.append(metrics)
        self.steps += 1


class _Signals:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits cleanly."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def any_process(self) -> bool:
        flag = self.received is not None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            flag = bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
        return flag


# ----------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class RunResult:
    step: int
    stopped_by_signal: bool
    final_metrics: dict
    val_metrics: dict
    skipped: int


def _nonfinite_error(step: int) -> FloatingPointError:
    return FloatingPointError(
        f"non-finite loss or gradients at step {step}: stopping (the update was not applied; "
        "set train.on_nonfinite=skip to skip such updates and count them instead)")


def train(config, workdir: str | Path, *, mesh=None) -> RunResult:
    """Train (or resume) a run in `workdir`; returns where it stopped."""
    workdir = Path(workdir)
    spec = TrainSpec.from_config(config)
    if mesh is None:
        mesh = sharding_lib.make_mesh(config.mesh)
    dp = sharding_lib.data_parallel_size(mesh)
    B = int(config.data.batch_size)
    if B % dp or (B // dp) % spec.microbatches:
        raise ValueError(f"data.batch_size={B} must split over data x fsdp = {dp} devices and "
                         f"then into train.microbatches={spec.microbatches} micro-batches")
    tokenizer = load_tokenizer_for(config)
    data = RunData(config)
    if spec.steps > 0:
        total_steps = spec.steps
    else:
        if config.data.num_epochs == -1:
            raise ValueError("train.steps=-1 needs a finite data.num_epochs")
        total_steps = data.count_batches(tokenizer)

    manager = ckpt_lib.make_manager(workdir, keep=spec.keep, keep_best=spec.keep_best,
                                    async_save=spec.async_checkpoint)
    latest = manager.latest_step()
    it = data.train_iterator(tokenizer)
    if latest is not None:
        _, model_cfg = ckpt_lib.read_run_config(workdir)
        if model_cfg is None:
            raise FileNotFoundError(f"{workdir}/model_config.json is missing; cannot resume")
        trainer = Trainer(model_cfg, spec, mesh, total_steps)
        params, train_state, data_state = ckpt_lib.restore(
            manager, latest, trainer.abstract_params, trainer.abstract_train)
        it.set_state(data_state)
        logging.info("resumed %s from step %d", workdir, latest)
        print(f"resuming from checkpoint step {latest} in {workdir}", flush=True)
    else:
        model, model_cfg = load_base_model(config, mesh, spec)
        params = nnx.to_pure_dict(nnx.state(model))
        del model
        ckpt_lib.write_run_config(workdir, config, model_cfg)
        trainer = Trainer(model_cfg, spec, mesh, total_steps)
        params = jax.device_put(params, trainer.param_shardings)
        train_state = trainer.init_train_state(params, int(config.seed))
    start = int(jax.device_get(train_state["step"]))

    seq_len = int(config.data.seq_len)
    fpt = flops_per_token(model_cfg, seq_len)
    peak = peak_flops(spec)
    val_batches = data.validation_batches(tokenizer, spec.eval_batches)
    writer = MetricWriter(workdir)
    bar = None
    if spec.progress and jax.process_index() == 0:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=start, desc="train", dynamic_ncols=True)
    if jax.process_index() == 0:
        print(f"mesh {sharding_lib.describe(mesh)}, {jax.process_count()} process(es); "
              f"steps {start}->{total_steps}; batch {B}x{seq_len}; "
              f"microbatches {spec.microbatches}; dtypes {model_cfg.param_dtype}/"
              f"{model_cfg.compute_dtype}; remat {model_cfg.remat}", flush=True)

    interval = _Interval()
    last_metrics: dict = {}
    val_metrics: dict = {}
    prev = None  # the previous step's metrics, checked one step late (keeps dispatch async)
    step = start
    stopped = False
    timing_from = None  # perf_counter once the first (compiling) step is done

    def check(m, at_step):
        if spec.on_nonfinite == "stop" and not bool(jax.device_get(m["ok"])):
            raise _nonfinite_error(at_step)

    def do_eval(at_step):
        nonlocal val_metrics
        if not val_batches:
            return None
        val_metrics = trainer.evaluate(params, val_batches)
        writer.write(at_step, {f"val/{k}": v for k, v in val_metrics.items()})
        return val_metrics["loss"]

    def do_save(at_step, val_loss=None, force=False):
        metrics = {ckpt_lib.BEST_METRIC: val_loss} if val_loss is not None else None
        ckpt_lib.save(manager, at_step, params, train_state, it.get_state(), metrics,
                      force=force)

    with _Signals() as signals:
        try:
            while step < total_steps:
                if signals.any_process():
                    stopped = True
                    break
                try:
                    batch = next(it)
                except StopIteration:
                    break
                params, train_state, metrics = trainer.step(params, train_state, batch)
                step += 1
                if prev is not None:
                    check(prev, step - 1)
                prev = metrics
                interval.add(metrics)
                if timing_from is None:  # the first step compiles: log it alone, untimed
                    check(metrics, step)
                    last_metrics = _log(interval, writer, bar, step, fpt, seq_len, B, peak,
                                        timed=False) or last_metrics
                    timing_from = interval.t0
                if bar is not None:
                    bar.update(1)
                if step % spec.log_every == 0 or step == total_steps:
                    check(metrics, step)
                    last_metrics = _log(interval, writer, bar, step, fpt, seq_len, B, peak) or last_metrics
                val_loss = None
                if spec.eval_every > 0 and step % spec.eval_every == 0 and step < total_steps:
                    val_loss = do_eval(step)
                if spec.checkpoint_every > 0 and step % spec.checkpoint_every == 0 \
                        and step < total_steps:
                    do_save(step, val_loss)
            if prev is not None:
                check(prev, step)
            if stopped:
                print(f"signal {signals.received}: saving a checkpoint at step {step} and "
                      "exiting", flush=True)
                if manager.latest_step() != step:
                    do_save(step, force=True)
            elif step == start and manager.latest_step() == step:
                # Rerun of a finished run (e.g. a resumable experiment script): nothing to add.
                print(f"already trained to step {step}; nothing to do", flush=True)
            else:
                if interval.steps:
                    last_metrics = _log(interval, writer, bar, step, fpt, seq_len, B, peak) or last_metrics
                val_loss = do_eval(step)
                if manager.latest_step() != step:
                    do_save(step, val_loss, force=True)
            manager.wait_until_finished()
        finally:
            if bar is not None:
                bar.close()
            writer.close()
            manager.close()
    skipped = int(jax.device_get(train_state["skipped"]))
    if skipped:
        print(f"skipped {skipped} update(s) with non-finite loss or gradients "
              f"(first at step {int(jax.device_get(train_state['first_bad']))})", flush=True)
    return RunResult(step, stopped, last_metrics, val_metrics, skipped)


def _log(interval: _Interval, writer: MetricWriter, bar, step: int, fpt: float, seq_len: int,
         batch: int, peak: float, timed: bool = True) -> dict | None:
    if not interval.pending:
        interval.reset(time.perf_counter())
        return None
    fetched = jax.device_get(interval.pending)
    now = time.perf_counter()
    dt = max(now - interval.t0, 1e-9)
    sums = {k: sum(float(m[k]) for m in fetched) for k in STAT_KEYS}
    out = summarize_sums(sums)
    out["grad_norm"] = float(np.mean([float(m["grad_norm"]) for m in fetched]))
    out["lr"] = float(fetched[-1]["lr"])
    if timed:
        out["tokens_per_s"] = sums["tokens"] / dt
        out["real_tokens_per_s"] = sums["nonpad"] / dt
        out["mfu"] = sums["tokens"] * fpt / dt / peak if peak == peak else float("nan")
        out["steps_per_s"] = len(fetched) / dt
    writer.write(step, out)
    if bar is not None:
        post = dict(loss=f"{out['loss']:.4f}", ans_acc=f"{out['answer_acc']:.3f}")
        if timed:
            post.update(tok_s=f"{out['tokens_per_s']:.0f}", mfu=f"{out['mfu']:.2f}")
        bar.set_postfix(post, refresh=False)
    interval.reset(now)
    return out


def run_eval_hook(config, workdir: Path, step: int) -> None:
    """`train.eval_at_end`: score the trained checkpoint with `cotjax eval` into workdir/eval."""
    summary = evaluate.run_eval(config=config, workdir=str(workdir), step=step,
                                out=str(workdir / "eval"))
    if jax.process_index() == 0:
        print(json.dumps({"eval": summary}, default=str), flush=True)


def main(flags) -> None:
    """`cotjax train --config=PATH --workdir=DIR`."""
    maybe_initialize_distributed()
    config = flags.config
    if config is None or not flags.workdir:
        raise SystemExit("train needs --config=PATH and --workdir=DIR")
    result = train(config, flags.workdir)
    if jax.process_index() == 0:
        print(json.dumps({"step": result.step, "stopped_by_signal": result.stopped_by_signal,
                          "skipped": result.skipped, **{f"train/{k}": v for k, v in
                                                         result.final_metrics.items()},
                          **{f"val/{k}": v for k, v in result.val_metrics.items()}}), flush=True)
    if not result.stopped_by_signal and TrainSpec.from_config(config).eval_at_end:
        run_eval_hook(config, Path(flags.workdir), result.step)
