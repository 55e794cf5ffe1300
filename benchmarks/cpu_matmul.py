"""Why XLA's fp32 dots trail (or lead) PyTorch's on a CPU, and which XLA CPU setting helps.

    python benchmarks/cpu_matmul.py [--model smollm2-135m-instruct] [--tokens 2048] [--passes 3]

Times every matrix product of one training step of the model's architecture at `--tokens`
tokens per step (batch x seq_len): each layer matrix's forward product, its input gradient and
its weight gradient, the tied logits and their gradients, and the attention score/value products
of 512-token blocks over the full square (the count of `metrics.flops_per_token`; the model's
causal blocks skip part of it), in PyTorch (oneDNN / MKL) and in JAX under each candidate XLA_FLAGS
setting (a fresh process each: XLA reads its flags once). PyTorch and the settings take turns for
`--passes` passes and each product's fastest pass counts: on a shared 2-core VM one pass of the
same product moved by up to 1.8x. A setting's step figure is the sum of its products' times
weighted by how often a step runs them. The compiled HLO says which library
ran the dot (XNNPACK, YNNPACK, oneDNN or XLA's own emitter), and each result is checked against a
float64 product (max error relative to the largest output). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
USER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")  # before importing cotjax adds its defaults

import machine  # noqa: E402

NO_YNN = "--xla_cpu_experimental_ynn_fusion_type=-individual_dot"
# jaxlib 0.10 sends single dots to YNNPACK by default (fusion type individual_dot); the other
# libraries are tried with that turned off.
SETTINGS = {
    "default": "",  # XLA's own defaults
    "cotjax": "",  # what cotjax sets for this CPU (cotjax/host.py)
    "xla_emitter": NO_YNN,
    "xnn_dot": NO_YNN + " --xla_cpu_experimental_xnn_fusion_type=dot",  # (no XNN dot seen)
    "onednn_dot": NO_YNN + " --xla_cpu_use_onednn=true"
                           " --xla_cpu_experimental_onednn_fusion_type=dot",
    "ynn_dot_fusions": "--xla_cpu_experimental_ynn_fusion_type=+dot",
    "xnn_graph": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "vector_512": "--xla_cpu_prefer_vector_width=512",
    "no_eigen_threads": "--xla_cpu_multi_thread_eigen=false",
}


def shapes(hf: dict, tokens: int, block: int = 512) -> list[dict]:
    """(name, batch, m, k, n, count per step) of every product in one training step: for a
    weight W[k, n] on x[tokens, k], the forward x W, the input gradient dy W^T and the weight
    gradient x^T dy; attention per head and row block."""
    d, ff = hf["hidden_size"], hf["intermediate_size"]
    hd = hf.get("head_dim") or d // hf["num_attention_heads"]
    q, kv, layers = hf["num_attention_heads"] * hd, hf["num_key_value_heads"] * hd, \
        hf["num_hidden_layers"]
    mats = {"wq_wo": (d, q, 2), "wk_wv": (d, kv, 2), "gate_up": (d, ff, 2), "down": (ff, d, 1)}
    out = []
    for name, (k, n, per_layer) in mats.items():
        c = per_layer * layers
        out += [dict(name=f"{name}.fwd", b=1, m=tokens, k=k, n=n, count=c, form="xw"),
                dict(name=f"{name}.dx", b=1, m=tokens, k=n, n=k, count=c, form="dyWt"),
                dict(name=f"{name}.dw", b=1, m=k, k=tokens, n=n, count=c, form="xtdy")]
    v = hf["vocab_size"]
    if hf.get("tie_word_embeddings"):  # logits = x E^T with the embedding E[v, d]
        out += [dict(name="logits.fwd", b=1, m=tokens, k=d, n=v, count=1, form="dyWt"),
                dict(name="logits.dx", b=1, m=tokens, k=v, n=d, count=1, form="xw"),
                dict(name="logits.dw", b=1, m=v, k=tokens, n=d, count=1, form="xtdy")]
    else:
        out += [dict(name="logits.fwd", b=1, m=tokens, k=d, n=v, count=1, form="xw"),
                dict(name="logits.dx", b=1, m=tokens, k=v, n=d, count=1, form="dyWt"),
                dict(name="logits.dw", b=1, m=d, k=tokens, n=v, count=1, form="xtdy")]
    block = min(block, tokens)
    heads = hf["num_attention_heads"] * (tokens // block)
    out += [dict(name="attn.scores", b=heads, m=block, k=hd, n=block, count=3 * layers,
                 form="qkt"),
            dict(name="attn.values", b=heads, m=block, k=block, n=hd, count=3 * layers,
                 form="xw")]
    return out


def _operands(s, rng):
    import numpy as np

    b, m, k, n = s["b"], s["m"], s["k"], s["n"]
    if s["form"] == "xw":
        a, w = rng.standard_normal((b, m, k)), rng.standard_normal((b, k, n))
    elif s["form"] == "dyWt":  # dy[m, k] @ W[n, k]^T
        a, w = rng.standard_normal((b, m, k)), rng.standard_normal((b, n, k))
    elif s["form"] == "xtdy":  # x[k, m]^T @ dy[k, n]
        a, w = rng.standard_normal((b, k, m)), rng.standard_normal((b, k, n))
    else:  # qkt: q[m, k] @ kk[n, k]^T
        a, w = rng.standard_normal((b, m, k)), rng.standard_normal((b, n, k))
    if b == 1:
        a, w = a[0], w[0]
    return a.astype(np.float32), w.astype(np.float32)


def _product(xp, form, a, w):
    t = (lambda x: x.swapaxes(-1, -2))
    if form == "xw":
        return xp.matmul(a, w)
    if form in ("dyWt", "qkt"):
        return xp.matmul(a, t(w))
    return xp.matmul(t(a), w)


def _flops(s):
    return 2.0 * s["b"] * s["m"] * s["k"] * s["n"]


def run_jax(specs, reps):
    """Seconds, library and relative error of each product under this process's XLA_FLAGS."""
    import jax
    import numpy as np

    rng, rows = np.random.default_rng(0), []
    for s in specs:
        a, w = _operands(s, rng)
        f = jax.jit(lambda x, y, form=s["form"]: _product(jax.numpy, form, x, y))
        text = f.lower(a, w).compile().as_text()
        kinds = re.findall(r'"kind":"__(\w+?)_fusion"', text)
        lib = "+".join(sorted(set(kinds))) or "xla"
        ja, jw = jax.device_put(a), jax.device_put(w)
        secs = machine.best_seconds(lambda: f(ja, jw).block_until_ready(), reps)
        ref = _product(np, s["form"], a.astype(np.float64), w.astype(np.float64))
        err = float(np.abs(np.asarray(f(ja, jw)) - ref).max() / np.abs(ref).max())
        rows.append(dict(name=s["name"], seconds=secs, library=lib, rel_error=err))
    return rows


def run_torch(specs, reps):
    import numpy as np
    import torch

    rng, rows = np.random.default_rng(0), []
    for s in specs:
        a, w = (torch.from_numpy(x) for x in _operands(s, rng))
        secs = machine.best_seconds(lambda: _product(torch, s["form"], a, w), reps)
        rows.append(dict(name=s["name"], seconds=secs))
    return rows


def _step(specs, rows):
    """Matmul seconds of one training step and the GFLOP/s they make."""
    secs = sum(s["count"] * r["seconds"] for s, r in zip(specs, rows))
    return secs, sum(s["count"] * _flops(s) for s in specs) / secs / 1e9


def _child(name, args):
    """The JAX rows of one setting, run in a fresh process with its flags, or an error line."""
    env = dict(os.environ, XLA_FLAGS=(SETTINGS[name] + " " + USER_XLA_FLAGS).strip(),
               COTJAX_XLA_DEFAULTS="1" if name == "cotjax" else "0")
    out = subprocess.run([sys.executable, __file__, "--child", "--model", args.model,
                          "--tokens", str(args.tokens), "--reps", str(args.reps)],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"exit {out.returncode}"]
        return {"error": lines[-1][:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _merge(best, rows):
    """Per product, the fastest of the passes so far (the machine's noise is one-sided)."""
    if best is None:
        return rows
    return [min(a, b, key=lambda r: r["seconds"]) for a, b in zip(best, rows)]


def _summary(specs, rows, torch_rows, t_secs):
    secs, gflops = _step(specs, rows)
    return {"step_matmul_s": round(secs, 4), "gflops": round(gflops, 1),
            "vs_torch": round(t_secs / secs, 3),
            "libraries": sorted({r["library"] for r in rows}),
            "max_rel_error": float(f"{max(r['rel_error'] for r in rows):.2e}"),
            "products": {r["name"]: {"jax_gflops": round(_flops(s) / r["seconds"] / 1e9, 1),
                                     "torch_gflops": round(_flops(s) / tr["seconds"] / 1e9, 1),
                                     "library": r["library"]}
                         for s, r, tr in zip(specs, rows, torch_rows)}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--passes", type=int, default=3,
                   help="interleaved passes over PyTorch and every setting; each product's "
                        "best pass counts")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help="comma-separated names among " + ", ".join(SETTINGS))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    from cotjax import weights

    specs = shapes(weights.read_config(args.model), args.tokens)
    if args.child:  # one setting, flags already in XLA_FLAGS
        print(json.dumps(run_jax(specs, args.reps)), flush=True)
        return
    names = args.settings.split(",")
    best, errors, torch_best = {}, {}, None
    for n in range(args.passes):
        torch_best = _merge(torch_best, run_torch(specs, args.reps))
        print(json.dumps({"pass": n, "framework": "torch",
                          "step_matmul_s": round(_step(specs, torch_best)[0], 4)}), flush=True)
        for name in names:
            if name in errors:
                continue
            rows = _child(name, args)
            if isinstance(rows, dict):
                errors[name] = rows
                print(json.dumps({"pass": n, "setting": name, **rows}), flush=True)
                continue
            best[name] = _merge(best.get(name), rows)
            print(json.dumps({"pass": n, "setting": name,
                              "step_matmul_s": round(_step(specs, rows)[0], 4)}), flush=True)
    t_secs, t_gflops = _step(specs, torch_best)
    results = {k: _summary(specs, v, torch_best, t_secs) for k, v in best.items()}
    for k, v in results.items():
        print(json.dumps({"setting": k, **{a: b for a, b in v.items() if a != "products"}}),
              flush=True)
    fastest = min(results, key=lambda k: results[k]["step_matmul_s"])
    print(json.dumps({"tokens": args.tokens, "model": args.model, "passes": args.passes,
                      "best": fastest, "torch_step_matmul_s": round(t_secs, 4),
                      "torch_gflops": round(t_gflops, 1), "settings": {**results, **errors},
                      "flags": {k: SETTINGS[k] for k in names}, "machine": machine.describe()}),
          flush=True)


if __name__ == "__main__":
    main()
