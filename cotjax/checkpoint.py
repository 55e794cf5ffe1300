"""Orbax checkpoints of a training run: state + data iterator, resume, best-k, export, eval loading.

A run's workdir holds

    config.json          the run's ml_collections config (written once, at the first start)
    model_config.json    the ModelConfig of the trained model (architecture, dtypes)
    checkpoints/<step>/  Orbax checkpoints, three items each:
        params           the model parameters (what evaluation and export read)
        train            optimizer state, step, RNG key, non-finite counters
        data             the data iterator state of every process (JSON)
    metrics.jsonl, events.out.tfevents.*   written by `cotjax.train`

Orbax writes each checkpoint into a temporary directory and renames it when complete (atomic
finalize), so a process killed mid-save leaves no checkpoint that a restart would load. The
manager keeps the last `keep` checkpoints plus the `keep_best` with the lowest validation loss.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

CKPT_DIR = "checkpoints"
BEST_METRIC = "val_loss"


# ----------------------------------------------------------------------------------------------
# The run's configuration, saved beside its checkpoints.


def model_config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def model_config_from_dict(d: dict):
    from cotjax.model import ModelConfig, RopeConfig

    d = dict(d)
    d["rope"] = RopeConfig(**d["rope"])
    if d.get("local_rope"):
        d["local_rope"] = RopeConfig(**d["local_rope"])
    for key in ("layer_types", "eos_token_ids"):
        d[key] = tuple(d.get(key) or ())
    return ModelConfig(**d)


def write_run_config(workdir: str | Path, config, model_cfg) -> None:
    """Write config.json and model_config.json (process 0 only; kept if already there)."""
    if jax.process_index() != 0:
        return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "config.json").exists():
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    (workdir / "model_config.json").write_text(
        json.dumps(model_config_to_dict(model_cfg), indent=2))


def read_run_config(workdir: str | Path) -> tuple[ml_collections.ConfigDict, Any]:
    """(config, ModelConfig or None) saved in a run's workdir."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a cotjax training workdir?")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    mpath = workdir / "model_config.json"
    model_cfg = model_config_from_dict(json.loads(mpath.read_text())) if mpath.is_file() else None
    return config, model_cfg


# ----------------------------------------------------------------------------------------------
# The manager.


def make_manager(workdir: str | Path, *, keep: int = 3, keep_best: int = 1,
                 async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager over `workdir/checkpoints`: last `keep` plus best `keep_best`."""
    cm = ocp.checkpoint_managers
    policies = [cm.LatestN(n=max(int(keep), 1))]
    if keep_best > 0:
        policies.append(cm.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=True,
                                 n=int(keep_best), keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies),
        # best_fn makes the manager write each checkpoint's metrics (restarts rank by them).
        best_fn=(lambda m: m[BEST_METRIC]) if keep_best > 0 else None, best_mode="min",
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        read_only=read_only,
        create=not read_only,
    )
    directory = Path(workdir).absolute() / CKPT_DIR
    return ocp.CheckpointManager(directory, options=options,
                                 item_names=("params", "train", "data"))


def _gather_json(obj) -> list:
    """Every process's JSON-able `obj`, in process order (one collective)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    n = multihost_utils.process_allgather(np.int32(len(raw)))
    buf = np.zeros(int(np.max(n)), np.uint8)
    buf[:len(raw)] = raw
    allbufs = multihost_utils.process_allgather(buf)
    return [json.loads(bytes(allbufs[i][:int(n[i])]).decode()) for i in range(len(n))]


def save(manager: ocp.CheckpointManager, step: int, params, train_state, data_state,
         metrics: dict | None = None, force: bool = False) -> bool:
    """Save (asynchronously if the manager is async); `data_state` is this process's iterator
    state, gathered from every process into one JSON item."""
    data = {"process_count": jax.process_count(), "states": _gather_json(data_state)}
    args = ocp.args.Composite(params=ocp.args.StandardSave(params),
                              train=ocp.args.StandardSave(train_state),
                              data=ocp.args.JsonSave(data))
    return manager.save(step, args=args, metrics=metrics, force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_params, abstract_train):
    """(params, train_state, this process's data iterator state) at `step`, placed by the
    shardings on the abstract trees (jax.ShapeDtypeStruct with .sharding)."""
    out = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        train=ocp.args.StandardRestore(abstract_train),
        data=ocp.args.JsonRestore()))
    data = out["data"]
    if data["process_count"] != jax.process_count():
        raise ValueError(
            f"checkpoint step {step} was written by {data['process_count']} processes; this run "
            f"has {jax.process_count()}: the data iterator state cannot be resumed exactly")
    return out["params"], out["train"], data["states"][jax.process_index()]


def restore_params(workdir: str | Path, step: int | None, abstract_params):
    """The params item of a run's checkpoint (`step` None: latest), and the step."""
    manager = make_manager(workdir, read_only=True)
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {Path(workdir) / CKPT_DIR}")
    if step is None:
        step = manager.latest_step()
    elif step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {Path(workdir) / CKPT_DIR}; "
                                f"steps: {sorted(steps)}")
    out = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
    manager.close()
    return out["params"], step


# ----------------------------------------------------------------------------------------------
# Loading a trained model for evaluation, notebooks and export.


def _abstract_params(model_cfg, mesh=None):
    from flax import nnx

    from cotjax import model as model_lib
    from cotjax import sharding as sharding_lib

    abstract = nnx.state(model_lib.abstract(model_cfg))
    shapes = nnx.to_pure_dict(abstract)
    axes = nnx.to_pure_dict(jax.tree.map(lambda v: v.logical_axes, abstract,
                                         is_leaf=lambda v: isinstance(v, nnx.Variable)))
    if mesh is None:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                                 shapes)
    else:
        shardings = sharding_lib.param_shardings(shapes, axes, mesh)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def load_model_for_eval(workdir: str | Path, step: int | str | None = None, mesh=None):
    """(Decoder, ModelConfig, tokenizer, config) of a training run.

    step: None (latest checkpoint), an int, or "base" (the pretrained model the run started
    from, with the run's dtypes). `mesh`: shard the params by the rules table (default: one
    device).
    """
    from flax import nnx

    from cotjax import model as model_lib
    from cotjax import train as train_lib

    config, model_cfg = read_run_config(workdir)
    tokenizer = train_lib.load_tokenizer_for(config)
    if isinstance(step, str):
        if step == "base":
            model, model_cfg = train_lib.load_base_model(config, mesh)
            return model, model_cfg, tokenizer, config
        if step == "latest":
            step = None
        elif step.isdigit():
            step = int(step)
        else:
            raise ValueError(f"step must be 'latest', 'base' or a number, got {step!r}")
    if model_cfg is None:
        raise FileNotFoundError(f"{Path(workdir) / 'model_config.json'} is missing")
    params, step = restore_params(workdir, step, _abstract_params(model_cfg, mesh))
    graphdef = nnx.graphdef(model_lib.abstract(model_cfg))
    model = nnx.merge(graphdef, params)
    logging.info("loaded %s step %d", workdir, step)
    return model, model_cfg, tokenizer, config


def export_main(flags) -> None:
    """`cotjax export --workdir=DIR [--step=N|latest|base] --out=HF_DIR`."""
    from cotjax import weights

    if not flags.workdir or not flags.out:
        raise SystemExit("export needs --workdir=DIR and --out=HF_DIR")
    step = flags.step if flags.step not in (None, "") else None
    model, model_cfg, tokenizer, _ = load_model_for_eval(flags.workdir, step)
    out = weights.export_hf(model, flags.out, tokenizer)
    print(json.dumps({"exported": str(out), "workdir": str(flags.workdir),
                      "step": step if step is not None else "latest"}))
