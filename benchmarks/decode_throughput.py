"""Greedy decoding throughput: cotjax vs transformers' `generate`, same prompts, batch and dtype.

    python benchmarks/decode_throughput.py                      # 64 prompts x 256 new tokens
    python benchmarks/decode_throughput.py --prompts=8 --new_tokens=16   # smoke test

Both sides decode the first N GSM8K training questions in the plain template
("Question: ...\\nAnswer:"), tokenized as `tokenizer(prompt).input_ids`, in batches of
`--batch_size` rows, greedy, in the same dtype (`--dtype`, float32 by default; weights, activations
and KV cache alike), and both ignore EOS so every row produces exactly
`--new_tokens` tokens (the work is identical; tokens/s = prompts * new_tokens / seconds).
transformers batches with left padding and an attention mask, as cotjax does; where JAX runs on a
GPU, transformers runs on the same GPU (torch CUDA). Compilation
(cotjax) and a 2-token warm-up call (transformers) are done before timing and reported apart.

Prints one JSON object per line; the last line holds cotjax_tokens_per_s, hf_tokens_per_s, ratio.
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

import machine  # noqa: E402
from cotjax import decode, formatting, records, weights  # noqa: E402


def _prompts(path: str, n: int) -> list[str]:
    out = []
    for where, raw in records.read_json_lines(path):
        out.append(formatting.format_prompt(records.parse_gsm8k(raw, where), "plain"))
        if len(out) == n:
            break
    return out


def _emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def run_cotjax(spec: str, ids: list[list[int]], new_tokens: int, batch_size: int,
               dtype: str) -> dict:
    model, _ = weights.load_model(spec, param_dtype=dtype, compute_dtype=dtype)
    kw = dict(max_new_tokens=new_tokens, eos_ids=(), batch_size=batch_size)
    t0 = time.perf_counter()
    decode.warmup(model, ids, **kw)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = decode.generate(model, ids, **kw)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o) for o in outs)
    return dict(system="cotjax", seconds=seconds, compile_seconds=compile_s, tokens=tokens,
                tokens_per_s=tokens / seconds, outputs=outs)


def run_hf(spec: str, tokenizer, ids: list[list[int]], new_tokens: int, batch_size: int,
           dtype: str, device: str) -> dict:
    import torch
    import transformers

    path = weights.preset_path(spec)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype)).to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    hf.generation_config.eos_token_id = None  # ignore EOS: every row makes new_tokens tokens
    hf.generation_config.pad_token_id = pad

    def batches():
        for s in range(0, len(ids), batch_size):
            chunk = ids[s:s + batch_size]
            width = max(map(len, chunk))
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            yield input_ids.to(device), mask.to(device)

    def run(n):
        outs = []
        with torch.no_grad():
            for input_ids, mask in batches():
                g = hf.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                max_new_tokens=n, min_new_tokens=n)
                outs += g[:, input_ids.shape[1]:].tolist()
        if device == "cuda":
            torch.cuda.synchronize()
        return outs

    t0 = time.perf_counter()
    run(2)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = run(new_tokens)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o) for o in outs)
    return dict(system="transformers", seconds=seconds, warmup_seconds=warm_s, tokens=tokens,
                tokens_per_s=tokens / seconds, torch_threads=torch.get_num_threads(), device=device,
                outputs=outs)


def _torch_device() -> str:
    import jax
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="data/gsm8k/train.jsonl")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--skip_hf", action="store_true", help="cotjax only (no ratio)")
    args = ap.parse_args(argv)

    tokenizer = weights.load_tokenizer(args.model)
    ids = [list(tokenizer(p).input_ids) for p in _prompts(args.data, args.prompts)]
    lengths = [len(i) for i in ids]
    _emit(dict(event="config", model=args.model, prompts=len(ids), new_tokens=args.new_tokens,
               batch_size=args.batch_size, dtype=args.dtype, prompt_len_min=min(lengths),
               prompt_len_max=max(lengths),
               prompt_buckets=sorted({b for _, b in decode._plan(ids, args.batch_size)})))
    ours = run_cotjax(args.model, ids, args.new_tokens, args.batch_size, args.dtype)
    _emit({k: v for k, v in ours.items() if k != "outputs"})
    result = dict(cotjax_tokens_per_s=ours["tokens_per_s"])
    if not args.skip_hf:
        ref = run_hf(args.model, tokenizer, ids, args.new_tokens, args.batch_size, args.dtype,
                     _torch_device())
        _emit({k: v for k, v in ref.items() if k != "outputs"})
        same = sum(a == b for a, b in zip(ours["outputs"], ref["outputs"]))
        _emit(dict(event="agreement", identical_rows=same, rows=len(ids)))
        result.update(hf_tokens_per_s=ref["tokens_per_s"],
                      ratio=ours["tokens_per_s"] / ref["tokens_per_s"])
    result["machine"] = machine.describe()
    _emit(result)


if __name__ == "__main__":
    main()
