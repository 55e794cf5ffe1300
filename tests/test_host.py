"""cotjax/host.py: the CPU description benchmarks print, and the XLA CPU defaults set from it."""

import os
import subprocess
import sys

from cotjax import host

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: AMD EPYC
"""
XEON = EPYC.replace("AMD EPYC", "Intel(R) Xeon(R) Processor").replace(
    "avx2 bmi2", "avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16")
WIDTH = "--xla_cpu_prefer_vector_width"


def test_cpu_reads_model_and_the_matmul_isa():
    amd, intel = host.cpu(EPYC), host.cpu(XEON)
    assert (amd["model"], amd["family"], amd["model_number"]) == ("AMD EPYC", "25", "1")
    assert amd["isa"] == ["avx", "avx2", "fma"]
    assert intel["isa"] == ["avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                            "amx_bf16", "amx_tile"]
    assert host.cpu("")["isa"] == [] and host.cpu("")["cores"] >= 1


def test_wide_vectors_only_on_avx2_cpus_without_avx512():
    assert host.with_defaults("", host.cpu(EPYC)["isa"]) == f"{WIDTH}=512"
    assert host.with_defaults("", host.cpu(XEON)["isa"]) == ""  # unmeasured there: XLA's own
    assert host.with_defaults("", ["asimd"]) == ""  # Arm: XLA's own
    # Other flags are kept; a width the user set wins.
    assert host.with_defaults("--xla_force_host_platform_device_count=8", ["avx2"]) == \
        f"--xla_force_host_platform_device_count=8 {WIDTH}=512"
    assert host.with_defaults(f"{WIDTH}=256", ["avx2"]) == f"{WIDTH}=256"


def _flags_after_import(**env):
    code = "import os, cotjax; print(os.environ.get('XLA_FLAGS', ''))"
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "COTJAX_XLA_DEFAULTS")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, text=True,
                          capture_output=True, check=True).stdout.strip()


def test_import_sets_the_default_for_this_cpu_and_the_switch_turns_it_off():
    expected = host.with_defaults("--xla_cpu_enable_fast_math=false", host.cpu()["isa"])
    assert _flags_after_import(XLA_FLAGS="--xla_cpu_enable_fast_math=false") == expected
    assert _flags_after_import(XLA_FLAGS="--xla_cpu_enable_fast_math=false",
                               COTJAX_XLA_DEFAULTS="0") == "--xla_cpu_enable_fast_math=false"
