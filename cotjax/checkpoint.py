"""Orbax checkpoints of a training run: state + data iterator, resume, best-k.

A run's workdir holds

    config.json          the run's ml_collections config (written once, at the first start)
    model_config.json    the ModelConfig of the trained model (architecture, dtypes)
    checkpoints/<step>/  Orbax checkpoints, three items each:
        params           the model parameters (what evaluation and export read)
        train            optimizer state, step, RNG key, non-finite counters
        data             the data iterator state of every process (JSON)
    metrics.jsonl, tb/, data_report.json   written by `cotjax.train`

Orbax writes each checkpoint into a temporary directory and renames it when complete (atomic
finalize), so a process killed mid-save leaves no checkpoint that a restart would load. The
manager keeps the last `keep` checkpoints plus the `keep_best` with the lowest validation loss.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cotjax import paths
from cotjax.lora import LoraSpec
from cotjax.model import ModelConfig

CKPT_DIR = "checkpoints"
BEST_METRIC = "val_loss"


class _QuietMissingMetric(logging.Filter):
    """Orbax warns at every save without metrics when best-k is on. A checkpoint saved without a
    validation loss is never a "best" candidate (keep_checkpoints_without_metrics=False), which
    is what we want, so the warning says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Requested `tracked_metric`; did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietMissingMetric())


# ----------------------------------------------------------------------------------------------
# The run's configuration, saved beside its checkpoints.


def run_dir(workdir):
    """The workdir as an absolute epath (a URL stays a URL; Orbax wants absolute paths)."""
    return paths.path(workdir if paths.is_remote(workdir) else os.path.abspath(workdir))


def write_run_config(workdir, config, model_cfg) -> None:
    """Write config.json and model_config.json (process 0 only; kept if already there)."""
    if jax.process_index() != 0:
        return
    workdir = paths.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "config.json").exists():
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    (workdir / "model_config.json").write_text(
        json.dumps(model_cfg.to_dict(), indent=2))


def read_run_config(workdir) -> tuple[ml_collections.ConfigDict, Any]:
    """(config, ModelConfig or None) saved in a run's workdir."""
    workdir = paths.path(workdir)
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a cotjax training workdir?")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    mpath = workdir / "model_config.json"
    model_cfg = ModelConfig.from_dict(json.loads(mpath.read_text())) if mpath.is_file() else None
    return config, model_cfg


# ----------------------------------------------------------------------------------------------
# The manager.


# What a resumed run must keep: another objective or other labels would train other targets.
_SAME_ON_RESUME = (("train", "objective", "cot"), ("train", "reward_labels", "hard"),
                   ("data", "labels", ""), ("data", "labels_split", "lines"))


def check_resumable(config, workdir, head: str) -> ModelConfig:
    """The model config of a run that `config` resumes; a clear error when it would train
    another head, objective, labels (its config.json) or other adapters."""
    saved, model_cfg = read_run_config(workdir)
    if model_cfg is None:
        raise FileNotFoundError(f"{workdir}/model_config.json is missing; cannot resume")
    if model_cfg.head != head:
        raise ValueError(f"{workdir} holds a model with head={model_cfg.head!r}; "
                         f"train.objective={config.train.objective} trains head={head!r}: use "
                         "another --workdir")
    for section, key, default in _SAME_ON_RESUME:
        now = config.get(section, {}).get(key, default)
        before = saved.get(section, {}).get(key, default)
        if now != before:
            raise ValueError(f"{workdir} began with {section}.{key}={before!r}; resuming it "
                             f"with {now!r} would train other targets: use another --workdir")
    lora = LoraSpec.from_config(config.get("lora"))
    same = (lambda s: s and dataclasses.replace(s, dropout=0.0))  # noqa: E731 (dropout may change)
    if same(lora) != same(model_cfg.lora):
        raise ValueError(f"{workdir} began with lora={model_cfg.lora}; resuming it with "
                         f"lora={lora} would train other parameters: use another --workdir")
    return model_cfg


def make_manager(workdir, *, keep: int = 3, keep_best: int = 1,
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
        cleanup_tmp_directories=False,  # done here, synchronously: see remove_unfinished_saves
        read_only=read_only,
        create=not read_only,
    )
    directory = run_dir(workdir) / CKPT_DIR
    if not read_only:
        remove_unfinished_saves(directory)
    return ocp.CheckpointManager(directory, options=options,
                                 item_names=("params", "train", "data"))


def remove_unfinished_saves(directory) -> int:
    """Delete the temporary step directories (`<step>.orbax-checkpoint-tmp`) that a run killed
    mid-save left in `directory`, before a manager is made; returns how many (printed).

    Orbax 0.12 does this in a background thread at each manager's start. A restart makes two
    managers in a row (one to find the latest step, one to restore), so two threads deleted the
    same tree at once and the second failed on a file the first had removed
    (FileNotFoundError 'ocdbt.process_0': the SIGKILL test saw it in CI). Done here, once, before
    anything else touches the directory. Process 0 only, as Orbax does: the first save of any
    process is after collective training steps, so it never meets a half-deleted directory.
    """
    if jax.process_index() != 0 or not directory.exists():
        return 0
    names = ocp.path.step.tmp_checkpoints(directory)
    for name in names:
        (directory / name).rmtree(missing_ok=True)
    if names:
        print(f"removed {len(names)} unfinished checkpoint save(s) in {directory}: "
              f"{', '.join(sorted(names))}", flush=True)
    return len(names)


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


class ProcessCountMismatch(ValueError):
    """A readable checkpoint written by another number of processes (not a damaged one)."""


def restore(manager: ocp.CheckpointManager, step: int, abstract_params, abstract_train):
    """(params, train_state, this process's data iterator state) at `step`, placed by the
    shardings on the abstract trees (jax.ShapeDtypeStruct with .sharding)."""
    out = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        train=ocp.args.StandardRestore(abstract_train),
        data=ocp.args.JsonRestore()))
    data = out["data"]
    if data["process_count"] != jax.process_count():
        raise ProcessCountMismatch(
            f"checkpoint step {step} was written by {data['process_count']} processes; this run "
            f"has {jax.process_count()}: the data iterator state cannot be resumed exactly")
    return out["params"], out["train"], data["states"][jax.process_index()]


def restore_newest_readable(make_manager_fn, workdir, abstract_params, abstract_train,
                            fallback: bool = True):
    """(manager, step, params, train_state, data_state, unreadable steps) of the newest
    checkpoint that can be read; step None when there is none.

    When the newest checkpoint fails to read (a truncated array file, a deleted metadata file),
    the older ones are tried; once one restores, the newer unreadable ones are moved aside to
    `checkpoints/<step>.unreadable[.k]` (printed, and returned) so that the run can save those
    steps again. Nothing is moved unless an older step restored: when every step fails (a
    config that changed the optimizer state, a storage outage) the first error is raised and
    the directory is left as it was. With `fallback` False, or with several processes (a read
    can fail on one host only, and they must agree), the first failure stops with one line
    naming the step directory. `make_manager_fn()` builds a fresh manager.
    """
    manager = make_manager_fn()
    failed: list[tuple[int, str, Exception]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = restore(manager, step, abstract_params, abstract_train)
        except ProcessCountMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - TensorStore, Orbax and JSON errors alike
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            failed.append((step, reason, e))
            if not fallback or jax.process_count() > 1:
                where = run_dir(workdir) / CKPT_DIR / str(step)
                hint = "" if fallback else " (or set train.resume_fallback=true)"
                raise ValueError(f"checkpoint step {step} is unreadable ({reason}): remove "
                                 f"{where} to resume from the previous checkpoint{hint}") from e
            continue
        if not failed:
            return (manager, step, *restored, [])
        manager.close()
        for bad, reason, _ in failed:
            moved = _move_aside(run_dir(workdir) / CKPT_DIR / str(bad))
            print(f"checkpoint step {bad} is unreadable ({reason}); moved it to {moved}",
                  flush=True)
        return (make_manager_fn(), step, *restored, [bad for bad, _, _ in failed])
    if failed:
        step, reason, e = failed[0]
        raise ValueError(f"no checkpoint in {run_dir(workdir) / CKPT_DIR} could be read (step "
                         f"{step}: {reason}); nothing was moved. A changed config (the "
                         "optimizer state's structure) or unreachable storage does this too") from e
    return manager, None, None, None, None, []


def _move_aside(where):
    """Rename a step directory to `<step>.unreadable` (or `.unreadable.<k>` if taken)."""
    target, k = where.parent / f"{where.name}.unreadable", 1
    while target.exists():
        target, k = where.parent / f"{where.name}.unreadable.{k}", k + 1
    where.rename(target)
    return target


def latest_step(workdir) -> int:
    """The newest checkpoint step of a run (an error naming the directory when there is none)."""
    manager = make_manager(workdir, read_only=True)
    step = manager.latest_step()
    manager.close()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir(workdir) / CKPT_DIR}")
    return step


def restore_params(workdir, step: int | None, abstract_params):
    """The params item of a run's checkpoint (`step` None: latest), and the step."""
    manager = make_manager(workdir, read_only=True)
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {run_dir(workdir) / CKPT_DIR}")
    if step is None:
        step = manager.latest_step()
    elif step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {run_dir(workdir) / CKPT_DIR}; "
                                f"steps: {sorted(steps)}")
    out = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
    manager.close()
    return out["params"], step
