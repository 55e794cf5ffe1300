"""The host's share of one engine round when sampling with the calculator, from real chains.

    python benchmarks/host_round.py            # the H200 RFT round's samples, 512 rows
    python benchmarks/host_round.py --chains=200 --rows=64

With a tool hook the engine returns to the host at every trigger token; with hundreds of rows
that is about every decoding step. Each return costs host work that grows with the rows: stop
strings looked for in the rows' texts, the hook's calls, and the finished samples scored and
written. This measures each of those per call on `--chains` chains of the committed H200 round
(results/distill/gpu_round1/samples, SmolLM2's tokenizer; the chains are re-tokenized from their
text) and multiplies by how often a round of `--rows` rows needs it:

  stop checks    every live row each round (before 2026-12-04) or, now, a row once per
                 `--check_every` new tokens (rows / check_every a round on average)
  hook calls     rows x calculator calls per generated token of these chains
  scoring        rows / mean chain length samples finish each round; `score_prediction` each

The last line has the per-round milliseconds and the machine. It needs no model and no JAX
device: it times the Python the host runs between two decoding steps.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import machine  # noqa: E402

from cotjax import calculator, decode, weights  # noqa: E402
from cotjax.scoring import score_prediction  # noqa: E402

SAMPLES = "results/distill/gpu_round1/samples/samples-00000-of-00001.jsonl.gz"


def per_call_ms(fn, items) -> float:
    t = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t) / len(items) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--check_every", type=int, default=32)
    args = ap.parse_args()

    tok = weights.load_tokenizer("smollm2-135m-instruct")
    with gzip.open(Path(__file__).resolve().parent.parent / SAMPLES, "rt") as f:
        rows = [json.loads(line) for line in itertools.islice(f, args.chains)]
    ids = [tok(r["generation"], add_special_tokens=False)["input_ids"] for r in rows]
    texts = decode.TextRule(tok, [tok.eos_token_id], ["\nQuestion:"])
    stop = texts.stop_fn()
    hook = calculator.Hook(tok, texts.text)
    trigger = set(calculator.token_classes(tok, len(tok))["trigger"])
    prefixes = [i[:max(1, len(i) // 2)] for i in ids]  # a row is half-way on average
    at_triggers = [i[:j + 1] for i in ids for j, t in enumerate(i) if t in trigger]

    stop_ms = per_call_ms(lambda p: stop(0, list(p)), prefixes)
    hook_ms = per_call_ms(lambda p: hook(0, p), at_triggers)
    score_ms = per_call_ms(lambda r: score_prediction(r["generation"], r["gold"], "gsm8k"), rows)
    tokens = sum(map(len, ids))
    triggers_per_token = len(at_triggers) / tokens
    mean_tokens = tokens / len(ids)
    B = args.rows
    round_ms = {
        "stop_every_round": B * stop_ms,
        "stop_once_per_check_every": B / args.check_every * stop_ms,
        "hook": B * triggers_per_token * hook_ms,
        "scoring": B / mean_tokens * score_ms,
    }
    print(json.dumps({"event": "per_call_ms", "stop_check": stop_ms, "hook": hook_ms,
                      "score": score_ms, "chains": len(ids), "mean_tokens": mean_tokens,
                      "triggers_per_token": triggers_per_token}))
    print(json.dumps({"rows": B, "check_every": args.check_every,
                      "round_ms": {k: round(v, 3) for k, v in round_ms.items()},
                      "machine": machine.describe(probes={})}))


if __name__ == "__main__":
    main()
