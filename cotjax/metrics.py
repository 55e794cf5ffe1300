"""Where a run's metrics go, and the throughput figures among them (tokens/s, MFU).

Sinks: `metrics.jsonl` in the workdir (always), TensorBoard events (tensorboardX, when
installed) and Weights & Biases (only with `train.wandb_project` set; wandb is imported only
then). Process 0 writes. Non-finite values are written as JSON null, never as a bare NaN.
"""

from __future__ import annotations

import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cotjax import paths


def finite_or_none(v):
    """A non-finite float as None (JSON null): metric lines stay strict JSON."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


class MetricWriter:
    """metrics.jsonl + TensorBoard events (+ W&B) for one run (process 0 writes).

    The files are written in a `paths.Staging` directory: the workdir itself when it is local,
    else a local copy that is mirrored to the workdir (gs://...) after every write.
    """

    def __init__(self, workdir, wandb_project: str = "", run_config: dict | None = None,
                 resume_step: int | None = None):
        self.active = jax.process_index() == 0
        self.tb = self.wandb = None
        if not self.active:
            return
        self.staging = paths.Staging(workdir)
        self.staging.pull("metrics.jsonl")  # a resumed remote run appends to its history
        local = self.staging.local
        if resume_step is not None:
            _drop_rows_after(local / "metrics.jsonl", resume_step)
        self.jsonl = open(local / "metrics.jsonl", "a")
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(local / "tb"))
        except ImportError:  # pragma: no cover
            logging.warning("tensorboardX is not installed: no TensorBoard events")
        if wandb_project:
            try:
                import wandb
            except ImportError as e:
                raise SystemExit("train.wandb_project is set but wandb is not installed "
                                 "(pip install wandb)") from e
            self.wandb = wandb.init(project=wandb_project, name=self.staging.dest.name,
                                    dir=str(local), config=run_config or {}, resume="allow")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        clean = {k: finite_or_none(v) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self.jsonl.flush()
        scalars = {k: v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        self.staging.sync()

    def close(self):
        if not self.active:
            return
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.staging.close()


def _drop_rows_after(path, step: int) -> None:
    """A resumed run replays the steps after its checkpoint: drop their old rows so the file
    holds one row per step (and per validation), as an uninterrupted run writes it."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _row_step(line) is not None and _row_step(line) <= step]
    if len(kept) != len(lines):
        cut = sum(1 for line in lines if line.strip() and _row_step(line) is None)
        if cut:
            logging.warning("%s: dropped %d unreadable line(s) (a write cut short)", path, cut)
        path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in kept))


def _row_step(line: str) -> int | None:
    """A metrics row's step; None for a blank or half-written line."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def add_sums(values):
    """The total of one sum over steps: a float, or an array for vector sums (histograms)."""
    total = np.sum([np.asarray(v, np.float64) for v in values], axis=0)
    return float(total) if total.ndim == 0 else total


class Profiler:
    """`train.profile_steps`: a JAX profiler trace of that many training steps, the ones after
    the first (compiling) step, into WORKDIR/profile (TensorBoard's profile plugin, XProf or
    Perfetto read it); 0: off. Call it after every step with the step's outputs."""

    def __init__(self, workdir, first_step: int, steps: int):
        self.dir = str(workdir / "profile")
        self.start, self.stop = first_step + 1, first_step + 1 + steps
        self.steps, self.on = steps, False

    def __call__(self, step: int, outputs) -> None:
        if self.steps <= 0:
            return
        if step == self.start and not self.on:
            jax.block_until_ready(outputs)  # the compiling step stays out of the trace
            jax.profiler.start_trace(self.dir)
            self.on = True
        elif self.on and step >= self.stop:
            self.close(outputs)

    def close(self, outputs=None) -> None:
        if self.on:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self.on = False
            print(f"profile: {self.stop - self.start} steps traced into {self.dir}", flush=True)


class Interval:
    """Per-step metric sums between two log points; summarised by `log_interval`."""

    def __init__(self):
        self.reset(time.perf_counter())

    def reset(self, now: float):
        self.t0, self.pending, self.steps = now, [], 0

    def add(self, metrics):
        self.pending.append(metrics)
        self.steps += 1


def log_interval(interval: Interval, objective, writer: MetricWriter, bar, step: int,
                 flops_per_tok: float, peak: float, timed: bool = True,
                 causal=None) -> dict | None:
    """Fetch the interval's step metrics (one device_get), summarise and write them.
    `causal(real_tokens, pairs)`: the FLOPs a causal packed step needs (`causal_flops`), for
    `mfu_causal` when the steps report `attn_pairs`."""
    if not interval.pending:
        interval.reset(time.perf_counter())
        return None
    fetched = jax.device_get(interval.pending)
    now = time.perf_counter()
    dt = max(now - interval.t0, 1e-9)
    sums = {k: add_sums([m[k] for m in fetched]) for k in objective.keys}
    out = objective.summarize(sums)
    out["grad_norm"] = float(np.mean([float(m["grad_norm"]) for m in fetched]))
    out["lr"] = float(fetched[-1]["lr"])
    if timed and {"tokens", "nonpad"} <= set(sums):  # throughput needs the token counts
        out["tokens_per_s"] = sums["tokens"] / dt
        out["real_tokens_per_s"] = sums["nonpad"] / dt
        out["mfu"] = sums["tokens"] * flops_per_tok / dt / peak if peak == peak else float("nan")
        if causal is not None and all("attn_pairs" in m for m in fetched):
            pairs = sum(float(m["attn_pairs"]) for m in fetched)
            out["mfu_causal"] = (causal(sums["nonpad"], pairs) / dt / peak if peak == peak
                                 else float("nan"))
        out["steps_per_s"] = len(fetched) / dt
    writer.write(step, out)
    if bar is not None:
        post = {"loss": f"{out['loss']:.4f}"}
        if "answer_acc" in out:
            post["ans_acc"] = f"{out['answer_acc']:.3f}"
        if timed:
            post.update(tok_s=f"{out['tokens_per_s']:.0f}", mfu=f"{out['mfu']:.2f}")
        bar.set_postfix(post, refresh=False)
    interval.reset(now)
    return out


# ----------------------------------------------------------------------------------------------
# FLOPs and MFU.


def matmul_params(cfg) -> int:
    """N: the parameters a token multiplies by (the output projection included, the embedding
    lookup and the norms not; a reward model's head is D, not D x V)."""
    D, N, K, H, F, V, L = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                           cfg.mlp_dim, cfg.vocab_size, cfg.num_layers)
    out = D if getattr(cfg, "head", "lm") == "reward" else D * V
    return L * (D * N * H + 2 * D * K * H + N * H * D + 3 * D * F) + out


def adapter_params(cfg) -> int:
    """The LoRA adapters' parameters a token multiplies by: rank x (fan-in + fan-out) of each
    adapted layer matrix (0 without LoRA)."""
    spec = getattr(cfg, "lora", None)
    if spec is None:
        return 0
    D, N, K, H, F = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    sizes = {"wq": D + N * H, "wk": D + K * H, "wv": D + K * H, "wo": N * H + D,
             "w_gate": D + F, "w_up": D + F, "w_down": F + D}
    return cfg.num_layers * spec.rank * sum(sizes[t] for t in spec.targets)


def dense_flops(cfg) -> float:
    """Training FLOPs per token of the weight matmuls: 6 N (forward, input and weight gradients);
    with LoRA 4 N for the frozen base (no weight gradients) + 6 per adapter parameter."""
    if getattr(cfg, "lora", None) is None:
        return 6.0 * matmul_params(cfg)
    return 4.0 * matmul_params(cfg) + 6.0 * adapter_params(cfg)


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (`dense_flops`) + 12 L N_heads H T for attention scores and
    values over the full T x T square (PaLM's count; the `mfu` metric)."""
    return dense_flops(cfg) + 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len


def causal_flops(cfg, real_tokens, pairs) -> float:
    """Training FLOPs a causal, packed step needs (the `mfu_causal` metric): 6 N (`dense_flops`)
    per real token (padding needs none) + 12 L N_heads H per attended (query, key) pair: scores and values cost
    2 H each per head forward, and the backward pass twice the forward. `pairs` from
    `attention_pairs`; sliding-window layers are counted as global ones."""
    return (dense_flops(cfg) * real_tokens
            + 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * pairs)


def attention_pairs(segment_ids) -> jax.Array:
    """(query, key) pairs a causal, packed batch attends: an example of T tokens (one segment id
    > 0 of a row; 0 is padding) attends T (T + 1) / 2 of them. O(batch) memory (a scatter)."""
    seg = jnp.asarray(segment_ids)
    B, T = seg.shape
    counts = jnp.zeros((B, T + 1), jnp.float32).at[jnp.arange(B)[:, None], seg].add(1.0)[:, 1:]
    return (counts * (counts + 1) / 2).sum()


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


def peak_flops(given: float = 0.0) -> float:
    """Peak FLOP/s of the whole job: `given` (train.peak_flops) if > 0, a table lookup, or
    (CPU) measured."""
    if given > 0:
        return float(given)
    dev = jax.devices()[0]
    if dev.platform == "cpu":  # the fake CPU devices of a process share its cores
        return measure_matmul_flops() * jax.process_count()
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in dev.device_kind.lower():
            return flops * jax.device_count()
    logging.warning("unknown device %s: set train.peak_flops for MFU", dev.device_kind)
    return float("nan")
