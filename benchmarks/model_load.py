"""Loading a GGUF preset (weights and tokenizer): cotjax converting it with gguf-py (cold), cotjax
reading its conversion cache back (cached), and transformers' `from_pretrained(gguf_file=...)`, in
one process.

    python benchmarks/model_load.py                                  # both presets
    python benchmarks/model_load.py --presets=smollm2-135m-instruct  # smoke test

cotjax loads into a fresh temporary cache ($COTJAX_CACHE), so the first load converts and stores
and the second reads the stored entry (just written, so from the OS page cache; a later run may
read it from disk); the Gemma GGUF is assembled there, and jax, torch and transformers are
imported and JAX started, before any timing. Each cotjax figure is `weights.load_model` (host
arrays placed on the default device) plus `weights.load_tokenizer`; transformers' is its model in
float32 plus its tokenizer. One JSON object per preset, then the machine and the ratios last.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["COTJAX_CACHE"] = tempfile.mkdtemp(prefix="cotjax-load-bench-")
atexit.register(shutil.rmtree, os.environ["COTJAX_CACHE"], ignore_errors=True)

import machine  # noqa: E402
from cotjax import weights  # noqa: E402


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cotjax(spec: str) -> None:
    weights.load_model(spec)
    weights.load_tokenizer(spec)


def _transformers(spec: str) -> None:
    import torch
    import transformers

    path = weights.preset_path(spec)
    transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                      dtype=torch.float32)
    transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default=",".join(weights.PRESETS))
    args = p.parse_args()
    # Imports and JAX's start-up before any timing: the first load would pay them alone.
    import jax
    import torch  # noqa: F401
    import transformers  # noqa: F401

    jax.devices()
    rows = {}
    for spec in args.presets.split(","):
        weights.preset_path(spec)  # the Gemma GGUF assembled outside the timings
        row = dict(preset=spec, cotjax_cold_s=_seconds(lambda: _cotjax(spec)),
                   cotjax_cached_s=_seconds(lambda: _cotjax(spec)),
                   hf_s=_seconds(lambda: _transformers(spec)))
        row = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
        print(json.dumps(row), flush=True)
        rows[spec] = row
    last = {"machine": machine.describe(),
            "cached_vs_cold": {s: round(r["cotjax_cold_s"] / r["cotjax_cached_s"], 2)
                               for s, r in rows.items()},
            "ratio_vs_hf": {s: round(r["hf_s"] / r["cotjax_cached_s"], 2)
                            for s, r in rows.items()}}
    print(json.dumps(last), flush=True)


if __name__ == "__main__":
    main()
