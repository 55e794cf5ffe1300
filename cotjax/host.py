"""The host CPU (model, ISA) and the XLA CPU settings cotjax makes the default from it.

Imported by `cotjax/__init__.py`, so the settings are in XLA_FLAGS before JAX starts its CPU
backend (XLA reads its flags once, when the first device is asked for; a program that starts
JAX before importing cotjax keeps XLA's own defaults).

Measured by `benchmarks/cpu_matmul.py` and `benchmarks/train_throughput.py` (docs/train.md,
"Performance on each CPU kind"):
- x86 with AVX2 and no AVX-512 (AMD EPYC Zen 3, 2026-12-02): `--xla_cpu_prefer_vector_width=512`
  trained SmolLM2-135M 6% faster end to end (94.7-96.9 tok/s against 89.6-90.7, interleaved
  runs) and cut the step's matmul time in all three passes of the sweep. There 512-bit vectors
  are emitted as pairs of 256-bit instructions (more independent work per loop iteration), with
  no wide-register clock penalty to pay.
- AVX-512 CPUs keep XLA's default (256): there 512 means real 512-bit registers, which slow the
  clock on some Intel parts, and it has not been measured on one.
- Left alone: oneDNN inside XLA (`--xla_cpu_use_onednn`) crashed the process (heap
  corruption) in one sweep, not in a retry (intermittent); the other dot libraries and fusion
  modes were within the machine's noise.
Set COTJAX_XLA_DEFAULTS=0 to keep XLA's defaults; a flag already in XLA_FLAGS always wins.
"""

from __future__ import annotations

import os
import platform

# ISA extensions that decide which matmul kernels XLA and PyTorch can use.
ISA = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile",
       "asimd", "sve")


def cpu(cpuinfo: str | None = None) -> dict:
    """The CPU's model name, family and model numbers, matmul-relevant ISA flags and cores, from
    `cpuinfo` (the text of Linux's /proc/cpuinfo, read when None; elsewhere what `platform`
    knows)."""
    info = {"model": platform.processor() or platform.machine(), "family": None,
            "model_number": None, "isa": [], "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count()}
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return info
    first = cpuinfo.split("\n\n")[0]  # every processor block repeats the first's fields
    fields = {k.strip(): v.strip() for k, v in
              (line.split(":", 1) for line in first.splitlines() if ":" in line)}
    info["model"] = fields.get("model name", info["model"])
    info["family"], info["model_number"] = fields.get("cpu family"), fields.get("model")
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    info["isa"] = [f for f in ISA if f in flags]
    return info


def xla_cpu_flags(isa) -> list[str]:
    """The XLA CPU flags cotjax defaults to on a CPU with these ISA extensions."""
    if "avx2" in isa and "avx512f" not in isa:
        return ["--xla_cpu_prefer_vector_width=512"]
    return []


def with_defaults(xla_flags: str, isa) -> str:
    """XLA_FLAGS with cotjax's defaults added where the flag is not set already."""
    added = [f for f in xla_cpu_flags(isa) if f.split("=")[0] not in xla_flags]
    return " ".join([xla_flags, *added]).strip()


def apply_xla_defaults() -> None:
    """Put cotjax's CPU defaults into XLA_FLAGS (unless COTJAX_XLA_DEFAULTS=0)."""
    if os.environ.get("COTJAX_XLA_DEFAULTS", "1") == "0":
        return
    flags = with_defaults(os.environ.get("XLA_FLAGS", ""), cpu()["isa"])
    if flags:
        os.environ["XLA_FLAGS"] = flags
