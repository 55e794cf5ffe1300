"""Sampling throughput: K chains per problem through the engine, the static path and transformers.

    python benchmarks/sample_throughput.py                    # 64 GSM8K problems x K=8, 256 tokens
    python benchmarks/sample_throughput.py --problems=4 --k=2 --new_tokens=16   # smoke test

One workload, three systems, one process: the first `--problems` GSM8K training questions in the
model's chat template (as cotjax trains and evaluates SmolLM2), `--k` samples each at temperature
`--temperature` (no top-k / top-p), at most `--new_tokens` new tokens, ending at EOS (the model's
and the template's end of turn), in `--dtype`:

  engine        cotjax.engine: one prefill per problem shared by its K rows, rows refilled as
                they finish (`--rows` rows)
  static        cotjax.decode.generate on the K-times repeated prompts in batches of `--rows`
                (each batch runs until its longest row ends), with the engine's per-sample keys,
                so both draw the very same samples (counted as `identical_samples`)
  transformers  `generate(num_return_sequences=K, do_sample=True)` on `--rows // K` problems at a
                time (left padding), on the GPU when JAX runs on one

Useful tokens are the generated tokens up to and including each sample's EOS (no padding, nothing
after EOS); tokens/s = useful tokens / wall seconds, compilation (cotjax) and a warm-up call
(transformers) done before timing and reported apart. The last line holds engine_tokens_per_s,
static_tokens_per_s, hf_tokens_per_s, ratio_vs_static and ratio_vs_hf.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402

import machine  # noqa: E402
from cotjax import decode, engine, formatting, records, tokenize, weights  # noqa: E402


def _emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def _prompt_ids(path: str, n: int, tokenizer) -> list[list[int]]:
    out = []
    for where, raw in records.read_json_lines(path):
        rec = records.parse_gsm8k(raw, where)
        out.append(list(tokenizer(formatting.format_prompt(rec, "chat", tokenizer),
                                  add_special_tokens=False)["input_ids"]))
        if len(out) == n:
            break
    return out


def _useful(tokens, eos) -> int:
    for i, t in enumerate(tokens):
        if t in eos:
            return i + 1
    return len(tokens)


def warm_problems(ids, rows: int, k: int) -> list[int]:
    """The problems of a warm-up call that compiles the engine with a run's shapes: its longest
    prompt, and as many problems as a prefill takes."""
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    others = [i for i in range(len(ids)) if i != longest]
    return [longest] + others[:max(1, rows // k) - 1]


def run_engine(model, ids, k, kw) -> dict:
    reqs = [engine.Request(p, prompt, range(k)) for p, prompt in enumerate(ids)]
    warm = warm_problems(ids, kw["batch_size"], k)  # every row stopped after its first round
    t0 = time.perf_counter()
    list(engine.sample(model, [engine.Request(i, ids[i], range(k)) for i in warm],
                       stop_fn=lambda *_: True, check_every=1, **kw))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = {(s.problem, s.sample): s.tokens for s in engine.sample(model, reqs, **kw)}
    return dict(system="engine", seconds=time.perf_counter() - t0, compile_seconds=compile_s,
                outputs=outs)


def run_static(model, ids, k, kw, seed) -> dict:
    pairs = [(p, s) for p in range(len(ids)) for s in range(k)]
    prompts = [ids[p] for p, _ in pairs]
    keys = decode.sample_keys(seed, [p for p, _ in pairs], [s for _, s in pairs])
    t0 = time.perf_counter()
    decode.warmup(model, prompts, **kw)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = decode.generate(model, prompts, keys=keys, **kw)
    return dict(system="static", seconds=time.perf_counter() - t0, compile_seconds=compile_s,
                outputs=dict(zip(pairs, outs)))


def run_hf(spec, tokenizer, ids, k, rows, new_tokens, temperature, eos, dtype) -> dict:
    import torch
    import transformers

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if Path(spec).is_dir():  # a HF directory (e.g. `cotjax export` of a fine-tuned run)
        hf = transformers.AutoModelForCausalLM.from_pretrained(spec, dtype=getattr(torch, dtype))
    else:
        path = weights.preset_path(spec)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype))
    hf = hf.to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_call = max(1, rows // k)

    def run(n_tokens, problems):
        outs = {}
        torch.manual_seed(0)
        with torch.no_grad():
            for s in range(0, len(problems), per_call):
                chunk = problems[s:s + per_call]
                width = max(len(ids[p]) for p in chunk)
                input_ids = torch.tensor([[pad] * (width - len(ids[p])) + ids[p] for p in chunk])
                mask = torch.tensor([[0] * (width - len(ids[p])) + [1] * len(ids[p]) for p in chunk])
                g = hf.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                num_return_sequences=k, max_new_tokens=n_tokens,
                                eos_token_id=list(eos), pad_token_id=pad)
                new = g[:, width:].tolist()
                for j, p in enumerate(chunk):
                    for s_ in range(k):
                        outs[(p, s_)] = new[j * k + s_]
        if device == "cuda":
            torch.cuda.synchronize()
        return outs

    t0 = time.perf_counter()
    run(2, list(range(min(per_call, len(ids)))))
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = run(new_tokens, list(range(len(ids))))
    return dict(system="transformers", seconds=time.perf_counter() - t0, warmup_seconds=warm_s,
                torch_threads=torch.get_num_threads(), device=device, outputs=outs)


def _report(r: dict, eos) -> dict:
    useful = sum(_useful(t, eos) for t in r["outputs"].values())
    lengths = sorted(_useful(t, eos) for t in r["outputs"].values())
    out = {k: v for k, v in r.items() if k != "outputs"}
    out.update(samples=len(r["outputs"]), useful_tokens=useful,
               mean_length=round(useful / len(lengths), 1), max_length=lengths[-1],
               tokens_per_s=round(useful / r["seconds"], 1))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="a preset, .gguf or HF directory (e.g. a `cotjax export` of a CoT run)")
    ap.add_argument("--data", default="data/gsm8k/train.jsonl")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--new_tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--rows", type=int, default=64, help="rows decoded together (all systems)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--skip_hf", action="store_true")
    args = ap.parse_args(argv)

    tokenizer = weights.load_tokenizer(args.model)
    model, cfg = weights.load_model(args.model, param_dtype=args.dtype, compute_dtype=args.dtype)
    eos = tuple(dict.fromkeys([*cfg.eos_token_ids, *tokenize.eos_ids(tokenizer, "chat")]))
    ids = _prompt_ids(args.data, args.problems, tokenizer)
    _emit(dict(event="config", model=args.model, problems=len(ids), k=args.k,
               new_tokens=args.new_tokens, temperature=args.temperature, rows=args.rows,
               dtype=args.dtype, prompt_len_max=max(map(len, ids)), eos=list(eos)))
    kw = dict(max_new_tokens=args.new_tokens, eos_ids=eos, batch_size=args.rows, seed=args.seed,
              sampling=decode.SamplingConfig(temperature=args.temperature))
    ours = run_engine(model, ids, args.k, kw)
    ours_line = _report(ours, eos)
    _emit(ours_line)
    static = run_static(model, ids, args.k, kw, args.seed)
    static_line = _report(static, eos)
    _emit(static_line)
    same = sum(ours["outputs"][key] == static["outputs"][key] for key in ours["outputs"])
    _emit(dict(event="agreement", identical_samples=same, samples=len(ours["outputs"])))
    result = dict(engine_tokens_per_s=ours_line["tokens_per_s"],
                  static_tokens_per_s=static_line["tokens_per_s"])
    result["ratio_vs_static"] = round(result["engine_tokens_per_s"] / result["static_tokens_per_s"], 3)
    if not args.skip_hf:
        hf = run_hf(args.model, tokenizer, ids, args.k, args.rows, args.new_tokens,
                    args.temperature, eos, args.dtype)
        hf_line = _report(hf, eos)
        _emit(hf_line)
        result["hf_tokens_per_s"] = hf_line["tokens_per_s"]
        result["ratio_vs_hf"] = round(result["engine_tokens_per_s"] / result["hf_tokens_per_s"], 3)
    result["machine"] = machine.describe()
    _emit(result)


if __name__ == "__main__":
    main()
