"""Sampling with the calculator: how often the engine goes back to the host, and what it costs.

    python benchmarks/tool_rounds.py                          # 32 GSM8K problems x K=4, 64 rows
    python benchmarks/tool_rounds.py --problems=4 --k=2 --new_tokens=32   # smoke test

With a tool hook, a row that emits a trigger token ('=' for the calculator) needs the host.
The engine used to end the round at every trigger, which with hundreds of rows is about every
decoding step (host-bound on an H200: 64 ms a step at 512 rows). Now a row waits at its trigger
while the others decode on, and the round ends once `wait_share` of the decoding rows wait. This
samples one workload (the first `--problems` GSM8K training questions in the chat template,
`--k` samples each at `--temperature`, the calculator hook on every '=' as `cotjax sample
--config.eval.calculator=true` does) once per `--shares` value, in one process: 0 is the old
rule (a round per trigger). For each: useful tokens/s, rounds, decoding steps, hook calls,
row-steps spent waiting, the host's seconds (engine.sample's `stats`), and how many samples
are identical to the first share's (all of them: waiting changes no sample). The last line has
the ratios of tokens/s against the first share, and the machine. engine.sample's default
share (engine.WAIT_SHARE) is 0 on a CPU, from this benchmark, and 1/8 on an accelerator.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import machine  # noqa: E402
from sample_throughput import _emit, _prompt_ids, _useful, warm_problems  # noqa: E402

from cotjax import calculator, decode, engine, tokenize, weights  # noqa: E402


def run(model, tokenizer, ids, k, kw, share, problems=None) -> dict:
    """One pass over the workload (or over `problems`) with the calculator hook and
    `wait_share=share`."""
    texts = decode.TextRule(tokenizer, kw["eos_ids"])
    classes = calculator.token_classes(tokenizer, model.cfg.vocab_size)
    hook = calculator.Hook(tokenizer, texts.text)
    stats = collections.Counter()
    reqs = [engine.Request(p, ids[p], range(k)) for p in problems or range(len(ids))]
    t0 = time.perf_counter()
    outs = {(s.problem, s.sample): s.tokens
            for s in engine.sample(model, reqs, hook=hook, trigger_ids=classes["trigger"],
                                   number_ids=classes, wait_share=share, stats=stats, **kw)}
    seconds = time.perf_counter() - t0
    useful = sum(_useful(t, kw["eos_ids"]) for t in outs.values())
    return dict(wait_share=share, seconds=round(seconds, 2), samples=len(outs),
                useful_tokens=useful, tokens_per_s=round(useful / seconds, 1),
                rounds=stats["rounds"], steps=stats["steps"], hook_calls=stats["hook_calls"],
                waits=stats["waits"],
                calculator_inserts=hook.calls,
                decode_s=round(stats["decode_s"], 2), hook_s=round(stats["hook_s"], 2),
                stop_s=round(stats["stop_s"], 2), outputs=outs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="a preset, .gguf or HF directory (e.g. a `cotjax export` of a CoT run)")
    ap.add_argument("--data", default="data/gsm8k/train.jsonl")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--new_tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--rows", type=int, default=64, help="rows decoded together")
    ap.add_argument("--shares", default="0,0.125", help="wait_share values, the baseline first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = ap.parse_args(argv)
    shares = [float(s) for s in args.shares.split(",")]

    tokenizer = weights.load_tokenizer(args.model)
    model, cfg = weights.load_model(args.model, param_dtype=args.dtype, compute_dtype=args.dtype)
    eos = tuple(dict.fromkeys([*cfg.eos_token_ids, *tokenize.eos_ids(tokenizer, "chat")]))
    ids = _prompt_ids(args.data, args.problems, tokenizer)
    _emit(dict(event="config", model=args.model, problems=len(ids), k=args.k,
               new_tokens=args.new_tokens, temperature=args.temperature, rows=args.rows,
               dtype=args.dtype, shares=shares))
    kw = dict(max_new_tokens=args.new_tokens, eos_ids=eos, batch_size=args.rows, seed=args.seed,
              sampling=decode.SamplingConfig(temperature=args.temperature))
    # Compile once (the shares share one program), every row stopped after its first round.
    warm = warm_problems(ids, args.rows, args.k)
    t0 = time.perf_counter()
    run(model, tokenizer, ids, args.k, {**kw, "stop_fn": lambda *_: True, "check_every": 1},
        shares[0], warm)
    _emit(dict(event="warmup", seconds=round(time.perf_counter() - t0, 2)))
    results = []
    for share in shares:
        r = run(model, tokenizer, ids, args.k, kw, share)
        first = results[0]["outputs"] if results else r["outputs"]
        same = sum(r["outputs"][key] == first[key] for key in first)
        results.append(r)
        _emit({**{k: v for k, v in r.items() if k != "outputs"}, "identical_to_first": same})
    base = results[0]["tokens_per_s"]
    _emit(dict(tokens_per_s={str(r["wait_share"]): r["tokens_per_s"] for r in results},
               rounds={str(r["wait_share"]): r["rounds"] for r in results},
               ratio_vs_first={str(r["wait_share"]): round(r["tokens_per_s"] / base, 3)
                               for r in results},
               machine=machine.describe()))


if __name__ == "__main__":
    main()
