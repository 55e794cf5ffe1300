"""`cotjax search`'s PRM scoring: each candidate read whole, against read from its parent's cache.

    python benchmarks/search_scoring.py --workdir=runs/prm_synth/policy --prm=runs/prm_synth/prm \
        --data=runs/prm_synth/heldout_1to8.jsonl --problems=5

At every depth of the step search the PRM scores beam_width x beam_expand candidates per
problem. Read whole (`PrmScorer.full`, as `cotjax rerank` reads a chain), each candidate costs
its prompt and every step so far; read from its parent (`PrmScorer.__call__`: the partial
chain it grew from is read once, its keys and values reused), it costs its new step. This runs
one search (the cached scores steer it) and, at every depth, scores the same candidates both
ways in the same process: the seconds of each (compilation included, as a run pays it), their
ratio, and the largest difference between the two scores of a candidate. The search's own
summary (expansion and scoring seconds) goes to --out. The last line has the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import machine  # noqa: E402
from sample_throughput import _emit  # noqa: E402

from cotjax import evaluate, search  # noqa: E402


class BothWays(search.PrmScorer):
    """Scores every call's candidates whole and from their parents; the search gets the latter."""

    runs: list[BothWays] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.full_s = self.cached_s = self.max_diff = 0.0
        self.items = 0
        BothWays.runs.append(self)

    def __call__(self, items):
        t0 = time.perf_counter()
        whole = self.full([(p, text) for p, text, _ in items])
        t1 = time.perf_counter()
        got = super().__call__(items)
        self.full_s += t1 - t0
        self.cached_s += time.perf_counter() - t1
        self.max_diff = max([self.max_diff, *(abs(a - b) for a, b in zip(whole, got))])
        self.items += len(items)
        return got


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", help="the policy run (else --model)")
    ap.add_argument("--model", help="a policy model spec, when no --workdir")
    ap.add_argument("--prm", required=True, help="a run trained with train.objective=prm")
    ap.add_argument("--data", default="validation")
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--problems", type=int, default=5)
    ap.add_argument("--out", default="/tmp/search_scoring")
    for flag in ("max_new_tokens", "beam_width", "beam_expand", "beam_steps"):
        ap.add_argument(f"--{flag}", type=int, default=None, help="config.eval's, when given")
    args = ap.parse_args(argv)

    config = evaluate.resolve_config(None, args.workdir, args.model)
    config.eval.max_examples = args.problems
    for flag in ("max_new_tokens", "beam_width", "beam_expand", "beam_steps"):
        if getattr(args, flag) is not None:
            config.eval[flag] = getattr(args, flag)
    search.PrmScorer = BothWays  # run_search builds its scorer from this name
    summary = search.run_search(config, args.workdir, model=args.model, prm_run=args.prm,
                                data=args.data, out=args.out, task=args.task)
    scorer = BothWays.runs[-1]
    _emit(dict(problems=summary["n"], candidates=scorer.items,
               full_seconds=round(scorer.full_s, 2), cached_seconds=round(scorer.cached_s, 2),
               ratio=round(scorer.full_s / scorer.cached_s, 2),
               max_abs_diff=float(f"{scorer.max_diff:.3g}"),
               expand_seconds=summary["expand_seconds"], machine=machine.describe()))


if __name__ == "__main__":
    main()
