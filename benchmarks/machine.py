"""What machine a benchmark ran on: CPU model and ISA, cores and threads, XLA flags, and both
frameworks' measured matmul peaks, for the last JSON line of every benchmark.

The lead of one framework over the other depends on the CPU (XLA's dot emitters and PyTorch's
oneDNN kernels are tuned differently for AVX2 and AVX-512 parts), so every result carries this.
"""

from __future__ import annotations

import os
import time


def best_seconds(fn, reps: int) -> float:
    """The fastest of `reps` timed calls of `fn`, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def torch_matmul_flops(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n x n fp32 product in PyTorch on the CPU (best of `reps`)."""
    import torch

    a = torch.ones(n, n)
    return 2.0 * n**3 / best_seconds(lambda: a @ a, reps)


def describe(probes: dict | None = None) -> dict:
    """The machine for a benchmark's last line: CPU, threads, XLA flags and versions, plus the
    matmul probes given (GFLOP/s) or, on a CPU, measured here."""
    import jax
    import torch

    from cotjax import host, metrics

    out = {"cpu": host.cpu(), "device": jax.devices()[0].device_kind,
           "backend": jax.default_backend(), "torch_threads": torch.get_num_threads(),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__,
           "torch": torch.__version__}
    if probes is None and out["backend"] == "cpu":
        probes = {"jax_gflops": metrics.measure_matmul_flops() / 1e9,
                  "torch_gflops": torch_matmul_flops() / 1e9}
    out.update({k: round(v, 1) for k, v in (probes or {}).items()})
    return out
