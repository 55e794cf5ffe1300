"""Sharded, jitted fine-tuning: optimizer, Trainer, loop, preemption, resume.

    cotjax train --config=configs/quickstart.py --workdir=runs/quick [--config.train.steps=...]

The train state is a plain pytree, `{"params": ..., "train": {...}}`, where params is the NNX
decoder's pure dict (`nnx.to_pure_dict`) and `train` holds the optax state, the step, the RNG key
and non-finite counters. Shardings are read off the abstract tree (`jax.eval_shape`) through the
logical-axis rules of `cotjax.sharding`; the jitted step states its in/out shardings and donates
the state. The objective (`cotjax.loss`) is a seam: the Trainer asks it for token sums and
divides two of them, so gradient accumulation stays exact for any objective.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import re
import signal
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from cotjax import checkpoint as ckpt_lib
from cotjax import load
from cotjax import lora as lora_lib
from cotjax import metrics as metrics_lib
from cotjax import model as model_lib
from cotjax import paths, pipeline, splash
from cotjax import sharding as sharding_lib
from cotjax.defaults import REWARD_OBJECTIVES, TrainSpec
from cotjax.loss import Objective, make_objective, target_index
from cotjax.tokenize import EncodeSpec

# ----------------------------------------------------------------------------------------------
# Configuration.


_NO_DECAY = re.compile(r"(norm$)|(^b[a-z]?$)|(^b_)|(bias$)")


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


def loss_and_grads(objective: Objective, graphdef, params, batch, microbatches: int = 1,
                   batch_spec=None, frozen=None, key=None):
    """(token sums, gradient of num / den) over the batch, accumulated over `microbatches`
    pieces; exact: sums are added before dividing. Gradients are of `params` only; `frozen`
    holds the rest of the model (a LoRA run's base). `key`: LoRA dropout's PRNG key."""
    def sums_fn(p, mb, k=None):
        model = nnx.merge(graphdef, lora_lib.join(frozen, p))
        if k is not None:
            model.dropout_key = model_lib.DropoutKey(k)
        s = objective.sums(model, mb)
        return s["num"], s

    grad_fn = jax.grad(sums_fn, has_aux=True)
    if microbatches == 1:
        grads, sums = grad_fn(params, batch, key)
    else:
        def split(x):  # row b goes to micro-batch b % M: every device feeds every micro-batch
            B = x.shape[0]
            y = x.reshape(B // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)
            if batch_spec is not None:
                y = jax.lax.with_sharding_constraint(y, batch_spec)
            return y

        mbs = {k: split(v) for k, v in batch.items()}
        keys = None if key is None else jax.random.split(key, microbatches)

        def body(carry, xs):
            g, s = carry
            g2, s2 = grad_fn(params, *xs)
            return (jax.tree.map(jnp.add, g, g2), jax.tree.map(jnp.add, s, s2)), None

        zeros_g = jax.tree.map(jnp.zeros_like, params)
        shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], mbs))[1]
        zeros_s = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s), (mbs, keys))
    denom = jnp.maximum(sums["den"], 1e-9)
    grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
    return sums, grads


# ----------------------------------------------------------------------------------------------
# The data.


class RunData:
    """The training and validation batches of a config for this process."""

    def __init__(self, config):
        EncodeSpec.from_config(config.data)  # fail early on invalid loss weights
        self.config = copy.deepcopy(config)
        self.report: pipeline.DataReport | None = None
        self._train = None

    def _train_dataset(self, tokenizer):
        """The training split's dataset, loaded once (`count_batches` and the iterator share
        it); sets `self.report`."""
        if self._train is None:
            self._train, self.report = pipeline.make_train_dataset(self.config, tokenizer,
                                                                   "train")
        return self._train

    def train_iterator(self, tokenizer):
        """The training batches' iterator; `self.report` then says what loading them did."""
        ds = self._train_dataset(tokenizer)
        self.check_report()
        return iter(ds)

    def check_report(self) -> None:
        """Print what was skipped, dropped or cut (and the first reasons); refuse to start past
        `data.max_skipped_fraction`."""
        r = self.report
        lost = r.skipped + r.dropped
        # Out of the records this split drew on: the bad ones skipped before the split, and
        # its own examples (kept or dropped); not the validation hold-out or past max_examples.
        considered = r.skipped + r.examples + r.dropped
        if jax.process_index() == 0:
            print(f"data: {r.read} records read, {r.skipped} skipped as bad, {r.examples} "
                  f"training examples, {r.dropped} dropped and {r.truncated} truncated as longer "
                  f"than seq_len={self.config.data.seq_len}", flush=True)
            for reason in r.skip_reasons[:5]:
                print(f"  skipped: {reason}", flush=True)
        limit = float(self.config.data.get("max_skipped_fraction", 1.0))
        if considered and lost / considered > limit:
            raise ValueError(
                f"{lost} of {considered} records were skipped or dropped "
                f"({lost / considered:.1%}), more "
                f"than data.max_skipped_fraction={limit}: fix the data, raise data.seq_len, set "
                "data.overlong=truncate, or raise the limit")

    def count_batches(self, tokenizer) -> int:
        """Batches per process in `data.num_epochs` epochs (finite runs), the minimum over
        processes."""
        n = sum(1 for _ in self._train_dataset(tokenizer))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            n = int(np.min(multihost_utils.process_allgather(np.int32(n))))
        return n

    def validation_batches(self, tokenizer, limit: int = -1) -> list[dict[str, np.ndarray]]:
        """The validation split, one pass, unshuffled; every process gets as many batches
        (processes short of batches get empty padding ones)."""
        cfg = copy.deepcopy(self.config)
        with cfg.unlocked():
            cfg.data.num_epochs = 1
            cfg.data.shuffle = False
        if cfg.data.validation_size <= 0 and not pipeline.reward_objective(cfg):
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
# The trainer: shardings, jitted step and eval.


class Trainer:
    """The jitted pieces of a run for one model, objective, optimizer and mesh.

    Two seams, so that other objectives need no second loop: `objective` (cotjax.loss: the
    token sums of (model, batch); default the CoT loss) and `abstract_model` (an abstract NNX
    module, `nnx.eval_shape(...)`, whose graph and parameter shapes and logical axes the
    trainer takes; default the decoder of `cfg`), e.g. a decoder with a reward head.

    With LoRA (`cfg.lora`, `cotjax.lora.split`) only the adapters (and a reward head) are
    trained and have optimizer state; the frozen base (`set_frozen`) is an argument of every
    jitted call, never donated nor folded into the program as a constant.
    """

    def __init__(self, cfg, spec: TrainSpec, mesh, total_steps: int,
                 objective: Objective | None = None, abstract_model: nnx.Module | None = None):
        self.cfg, self.spec, self.mesh = cfg, spec, mesh
        self.objective = objective if objective is not None else make_objective(
            spec.objective, spec.loss_chunk, spec.target_logits_only)
        self.total_steps = total_steps
        module = abstract_model if abstract_model is not None else model_lib.abstract(cfg)
        self.graphdef = nnx.graphdef(module)
        self.tx, self.schedule = make_optimizer(spec, total_steps)
        shapes, axes = load.abstract_params(module)
        shapes, frozen_shapes = lora_lib.split(shapes, cfg.lora)
        self.logical_axes, frozen_axes = lora_lib.split(axes, cfg.lora)
        self.param_shardings = sharding_lib.param_shardings(shapes, self.logical_axes, mesh)
        self.frozen_shardings = sharding_lib.param_shardings(frozen_shapes, frozen_axes, mesh)
        self.frozen = {}  # the frozen base (LoRA); set with `set_frozen`
        rep = sharding_lib.replicated(mesh)
        abstract_opt = jax.eval_shape(self.tx.init, shapes)
        opt_shardings = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract_opt, self.param_shardings,
            transform_non_params=lambda _: rep, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
        self.train_shardings = {"opt_state": opt_shardings, "step": rep, "rng": rep,
                                "skipped": rep, "first_bad": rep}
        self.abstract_params = load.placed(shapes, self.param_shardings)
        i32 = jax.ShapeDtypeStruct((), jnp.int32)
        abstract_train = {"opt_state": abstract_opt, "step": i32, "skipped": i32, "first_bad": i32,
                          "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
        self.abstract_train = load.placed(abstract_train, self.train_shardings)
        self.batch_sharding = sharding_lib.batch_sharding(mesh)
        self.trace_count = 0
        self._micro_spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            None, sharding_lib.RULES["batch"]))
        state_sh = (self.param_shardings, self.train_shardings)
        frozen_sh = self.frozen_shardings
        self._step = jax.jit(self._step_fn,
                             in_shardings=(*state_sh, self.batch_sharding, frozen_sh),
                             out_shardings=(*state_sh, rep), donate_argnums=(0, 1))
        self._eval = jax.jit(self._eval_fn,
                             in_shardings=(self.param_shardings, self.batch_sharding, frozen_sh),
                             out_shardings=rep)
        self._grads = jax.jit(self._grads_fn,
                              in_shardings=(self.param_shardings, self.batch_sharding, frozen_sh),
                              out_shardings=(rep, self.param_shardings))
        self._init_opt = jax.jit(self.tx.init, in_shardings=(self.param_shardings,),
                                 out_shardings=opt_shardings)
        if cfg.attention == "fused":  # Splash's shard_map finds the mesh it is traced under
            self._step, self._eval, self._grads = (
                splash.under_mesh(f, mesh) for f in (self._step, self._eval, self._grads))

    # -- pure functions under jit --

    def _grads_fn(self, params, batch, frozen, key=None):
        return loss_and_grads(self.objective, self.graphdef, params, batch, self.spec.microbatches,
                              self._micro_spec if self.spec.microbatches > 1 else None,
                              frozen, key)

    def _step_fn(self, params, train, batch, frozen):
        self.trace_count += 1  # Python side effect: runs once per trace
        key = None
        if self.cfg.lora is not None and self.cfg.lora.dropout > 0:
            # a stream the carried key (fold_in(rng, step)) never takes: steps stay below 2^32-1
            key = jax.random.fold_in(jax.random.wrap_key_data(train["rng"]), 0xFFFFFFFF)
        sums, grads = self._grads_fn(params, batch, frozen, key)
        loss = sums["num"] / jnp.maximum(sums["den"], 1e-9)
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
                   "ok": ok, "loss": loss,
                   "attn_pairs": metrics_lib.attention_pairs(batch["segment_ids"])}
        return new_params, new_train, metrics

    def _eval_fn(self, params, batch, frozen):
        return self.objective.sums(nnx.merge(self.graphdef, lora_lib.join(frozen, params)), batch)

    # -- host API --

    def set_frozen(self, frozen: dict) -> None:
        """Place a LoRA run's frozen base (`cotjax.lora.split`) for every later call."""
        self.frozen = jax.device_put(frozen, self.frozen_shardings)

    def init_train_state(self, params, seed: int) -> dict:
        rep = sharding_lib.replicated(self.mesh)
        put = lambda x: jax.device_put(x, rep)  # noqa: E731
        return {"opt_state": self._init_opt(params),
                "step": put(np.int32(0)),
                "rng": put(np.asarray(jax.random.key_data(jax.random.key(seed)), np.uint32)),
                "skipped": put(np.int32(0)), "first_bad": put(np.int32(-1))}

    def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        if getattr(self.objective, "targets_only", False):  # train.target_logits_only
            batch = {**batch, "target_index": target_index(batch, self.objective.chunk)}
        return sharding_lib.shard_batch(batch, self.mesh)

    def step(self, params, train, batch):
        """One optimizer step; donates params and train."""
        return self._step(params, train, self.shard_batch(batch), self.frozen)

    def grads(self, params, batch):
        return self._grads(params, self.shard_batch(batch), self.frozen)

    def evaluate(self, params, batches) -> dict[str, float]:
        total = None
        for b in batches:
            sums = self._eval(params, self.shard_batch(b), self.frozen)
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        if total is None:
            return {}
        return self.objective.summarize(jax.device_get(total))



class _Signals:
    """A stop request: the loop saves a checkpoint and exits cleanly.

    One process: SIGTERM/SIGINT set a flag (a second Ctrl-C stops at once). Several processes:
    JAX's preemption service (started by `jax.distributed.initialize`) catches SIGTERM on any
    of them and agrees on a step at which all of them stop together (`reached_preemption`, one
    cheap call per step instead of an all-gather of a flag); SIGINT is left to kill the job.
    """

    def __init__(self, manager):
        self.manager = manager
        self.multi = jax.process_count() > 1
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        import threading

        if not self.multi and threading.current_thread() is threading.main_thread():
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

    def stop_requested(self, step: int) -> bool:
        """Whether to save and stop before `step + 1` (called at every step, on every process)."""
        if self.multi and self.manager.reached_preemption(step):
            self.received = signal.SIGTERM
        return self.received is not None


# ----------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class RunResult:
    step: int
    stopped_by_signal: bool
    data: dict  # what loading the training data did (pipeline.DataReport's counts)
    final_metrics: dict
    val_metrics: dict
    skipped: int


def _nonfinite_error(step: int) -> FloatingPointError:
    return FloatingPointError(
        f"non-finite loss or gradients at step {step}: stopping (the update was not applied; "
        "set train.on_nonfinite=skip to skip such updates and count them instead)")


def _start_or_resume(config, workdir, spec: TrainSpec, mesh, total_steps: int, objective, it):
    """(manager, trainer, params, train state, ModelConfig): restored from the newest readable
    checkpoint of `workdir` (the data iterator `it` set to its position), else the base model
    with a fresh optimizer state (and the run's config.json written)."""
    def make_manager():
        return ckpt_lib.make_manager(workdir, keep=spec.keep, keep_best=spec.keep_best,
                                     async_save=spec.async_checkpoint)

    head = "reward" if spec.objective in REWARD_OBJECTIVES else "lm"
    manager = make_manager()
    if manager.latest_step() is not None:
        model_cfg = ckpt_lib.check_resumable(config, workdir, head)
        trainer = Trainer(model_cfg, spec, mesh, total_steps, objective)
        if model_cfg.lora is not None:  # checkpoints hold the adapters: the base comes anew
            _, _, frozen = load.split_base_model(config, mesh, spec.remat, head)
            load.check_base(workdir, frozen)
            trainer.set_frozen(frozen)
        manager.close()
        manager, step, params, train_state, data_state, _ = ckpt_lib.restore_newest_readable(
            make_manager, workdir, trainer.abstract_params, trainer.abstract_train,
            fallback=spec.resume_fallback)
        it.set_state(data_state)
        logging.info("resumed %s from step %d", workdir, step)
        print(f"resuming from checkpoint step {step} in {workdir}", flush=True)
        return manager, trainer, params, train_state, model_cfg
    model_cfg, params, frozen = load.split_base_model(config, mesh, spec.remat, head)
    ckpt_lib.write_run_config(workdir, config, model_cfg)
    if model_cfg.lora is not None:
        load.write_base(workdir, frozen, config)
    trainer = Trainer(model_cfg, spec, mesh, total_steps, objective)
    trainer.set_frozen(frozen)
    params = jax.device_put(params, trainer.param_shardings)
    return manager, trainer, params, trainer.init_train_state(params, int(config.seed)), model_cfg


def train(config, workdir, *, mesh=None, objective: Objective | None = None) -> RunResult:
    """Train (or resume) a run in `workdir`; returns where it stopped. `objective`: the loss
    (default `train.objective`'s: the CoT loss, or a reward loss with the decoder's reward
    head, which `load.load_base_model(head="reward")` adds to the config's model)."""
    workdir = ckpt_lib.run_dir(workdir)
    spec = TrainSpec.from_config(config)
    if objective is None:
        objective = make_objective(spec.objective, spec.loss_chunk, spec.target_logits_only)
    if mesh is None:
        mesh = sharding_lib.make_mesh(config.mesh)
    dp = sharding_lib.data_parallel_size(mesh)
    B = int(config.data.batch_size)
    if B % dp or (B // dp) % spec.microbatches:
        raise ValueError(f"data.batch_size={B} must split over data x fsdp = {dp} devices and "
                         f"then into train.microbatches={spec.microbatches} micro-batches")
    tokenizer = load.load_tokenizer(config)
    data = RunData(config)
    if spec.steps > 0:
        total_steps = spec.steps
    else:
        if config.data.num_epochs == -1:
            raise ValueError("train.steps=-1 needs a finite data.num_epochs")
        total_steps = data.count_batches(tokenizer)
    it = data.train_iterator(tokenizer)
    if jax.process_index() == 0:  # beside config.json: what this start trained on
        paths.write_text(workdir / "data_report.json",
                         json.dumps(dataclasses.asdict(data.report), indent=2))
    manager, trainer, params, train_state, model_cfg = _start_or_resume(
        config, workdir, spec, mesh, total_steps, objective, it)
    start = int(jax.device_get(train_state["step"]))

    seq_len = int(config.data.seq_len)
    fpt = metrics_lib.flops_per_token(model_cfg, seq_len)
    causal = functools.partial(metrics_lib.causal_flops, model_cfg)
    peak = metrics_lib.peak_flops(spec.peak_flops)
    val_batches = data.validation_batches(tokenizer, spec.eval_batches)
    writer = metrics_lib.MetricWriter(workdir, spec.wandb_project, config.to_dict(),
                                      resume_step=start)  # rows past it are replays
    bar = None
    if spec.progress and jax.process_index() == 0:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=start, desc="train", dynamic_ncols=True)
    if jax.process_index() == 0:
        print(f"mesh {sharding_lib.describe(mesh)}, {jax.process_count()} process(es); "
              f"steps {start}->{total_steps}; batch {B}x{seq_len}; "
              f"microbatches {spec.microbatches}; dtypes {model_cfg.param_dtype}/"
              f"{model_cfg.compute_dtype}; remat {model_cfg.remat}", flush=True)

    interval = metrics_lib.Interval()
    profiler = metrics_lib.Profiler(workdir, start, spec.profile_steps)
    last_metrics: dict = {}
    val_metrics: dict = {}
    prev = None  # the previous step's metrics, checked one step late (keeps dispatch async)
    step = start
    stopped = False
    timing_from = None  # perf_counter once the first (compiling) step is done

    def log(timed=True):
        return metrics_lib.log_interval(interval, trainer.objective, writer, bar, step, fpt,
                                        peak, timed, causal)

    checked = {"step": start, "run": 0}  # last step checked; consecutive skipped updates

    def check(m, at_step):
        if at_step <= checked["step"]:
            return
        checked["step"] = at_step
        ok = bool(jax.device_get(m["ok"]))
        if spec.on_nonfinite == "stop" and not ok:
            raise _nonfinite_error(at_step)
        checked["run"] = 0 if ok else checked["run"] + 1
        if checked["run"] > spec.max_consecutive_skips:
            raise FloatingPointError(
                f"{checked['run']} updates in a row (steps {at_step - checked['run'] + 1}-"
                f"{at_step}) had a non-finite loss or gradients and were skipped, more than "
                f"train.max_consecutive_skips={spec.max_consecutive_skips}: stopping (lower the "
                "learning rate or check the data); the last checkpoint is unaffected")

    def do_eval(at_step):
        nonlocal val_metrics
        if not val_batches:
            return None
        val_metrics = trainer.evaluate(params, val_batches)
        writer.write(at_step, {f"val/{k}": v for k, v in val_metrics.items()})
        return val_metrics["loss"]

    def do_save(at_step, val_loss=None, force=False):
        # Only a finite validation loss makes a checkpoint a candidate for "best".
        finite = val_loss is not None and math.isfinite(val_loss)
        metrics = {ckpt_lib.BEST_METRIC: val_loss} if finite else None
        ckpt_lib.save(manager, at_step, params, train_state, it.get_state(), metrics,
                      force=force)

    with _Signals(manager) as signals:
        try:
            while step < total_steps:
                if signals.stop_requested(step):
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
                profiler(step, metrics)
                if timing_from is None:  # the first step compiles: log it alone, untimed
                    check(metrics, step)
                    last_metrics = log(timed=False) or last_metrics
                    timing_from = interval.t0
                if bar is not None:
                    bar.update(1)
                if step % spec.log_every == 0 or step == total_steps:
                    check(metrics, step)
                    last_metrics = log() or last_metrics
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
                    last_metrics = log() or last_metrics
                val_loss = do_eval(step)
                if manager.latest_step() != step:
                    do_save(step, val_loss, force=True)
            manager.wait_until_finished()
        finally:
            profiler.close()
            if bar is not None:
                bar.close()
            writer.close()
            manager.close()
    skipped = int(jax.device_get(train_state["skipped"]))
    if skipped:
        print(f"skipped {skipped} update(s) with non-finite loss or gradients "
              f"(first at step {int(jax.device_get(train_state['first_bad']))})", flush=True)
    r = data.report
    counts = {k: getattr(r, k) for k in ("read", "skipped", "examples", "dropped", "truncated")}
    return RunResult(step, stopped, counts, last_metrics, val_metrics, skipped)


def main(flags) -> None:
    """`cotjax train --config=PATH --workdir=DIR`."""
    sharding_lib.maybe_initialize_distributed()
    config = flags.config
    if config is None or not flags.workdir:
        raise SystemExit("train needs --config=PATH and --workdir=DIR")
    result = train(config, flags.workdir)
    if jax.process_index() == 0:
        print(final_line(result), flush=True)
    return result


def final_line(result: RunResult) -> str:
    """The run's last line, strict JSON (a non-finite metric is null, never a bare NaN): where
    it stopped, how many updates it skipped and how many examples it trained on."""
    row = {"step": result.step, "stopped_by_signal": result.stopped_by_signal,
           "skipped": result.skipped, **{f"data/{k}": v for k, v in result.data.items()},
           **{f"train/{k}": v for k, v in result.final_metrics.items()},
           **{f"val/{k}": v for k, v in result.val_metrics.items()}}
    return json.dumps({k: metrics_lib.finite_or_none(v) for k, v in row.items()},
                      allow_nan=False)
