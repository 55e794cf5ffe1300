"""What machine a benchmark ran on: CPU model and ISA, cores and threads, XLA flags, and both
frameworks' measured matmul peaks, for the last JSON line of every benchmark.

The lead of one framework over the other depends on the CPU (XLA's dot emitters and PyTorch's
oneDNN kernels are tuned differently for AVX2 and AVX-512 parts), so every result carries this.
"""

from __future__ import annotations

import os
import platform
import time

# ISA extensions that decide which matmul kernels either framework can use.
ISA = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile",
       "asimd", "sve")


def cpu() -> dict:
    """The CPU's model name, family/model numbers and matmul-relevant ISA flags (Linux
    /proc/cpuinfo; on other systems what `platform` knows)."""
    info = {"model": platform.processor() or platform.machine(), "family": None,
            "model_number": None, "isa": [], "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count()}
    try:
        text = open("/proc/cpuinfo").read().split("\n\n")[0]
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info["model"] = fields.get("model name", info["model"])
    info["family"], info["model_number"] = fields.get("cpu family"), fields.get("model")
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    info["isa"] = [f for f in ISA if f in flags]
    return info


def jax_matmul_flops(n: int = 2048, reps: int = 5) -> float:
    from cotjax import metrics

    return metrics.measure_matmul_flops(n=n, reps=reps)


def torch_matmul_flops(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n x n fp32 product in PyTorch on the CPU (best of `reps`)."""
    import torch

    a = torch.ones(n, n)
    a @ a
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def describe(probes: dict | None = None) -> dict:
    """The machine for a benchmark's last line: CPU, threads, XLA flags and versions, plus the
    matmul probes given (GFLOP/s) or, on a CPU, measured here."""
    import jax
    import torch

    out = {"cpu": cpu(), "device": jax.devices()[0].device_kind,
           "backend": jax.default_backend(), "torch_threads": torch.get_num_threads(),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__,
           "torch": torch.__version__}
    if probes is None and out["backend"] == "cpu":
        probes = {"jax_gflops": jax_matmul_flops() / 1e9,
                  "torch_gflops": torch_matmul_flops() / 1e9}
    out.update({k: round(v, 1) for k, v in (probes or {}).items()})
    return out
