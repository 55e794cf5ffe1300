"""`cotjax label-steps`: Monte Carlo labels for the steps of sampled chains (Math-Shepherd).

sample shards (`cotjax sample --out=DIR`) -> each chain split into steps (cotjax.prm) -> from the
prefix through every step, n completions sampled by the engine (one prefill per prefix, shared by
its n rows) -> final answers against the gold -> soft / hard labels, beside the step checker's
verdict -> OUT/labels-PPPPP-of-NNNNN.jsonl (one line per chain) and OUT/manifest.json.

Prompts are built exactly as `cotjax eval` and `cotjax sample` build them, so the labelling
model's config must prompt as the samples were prompted (template and prompting are checked
against the samples' manifest). Keys: the completions of step k of the c-th chain (chains in
(problem, sample) order over the whole input) use problem index `c * MAX_STEPS + k - 1`, so the
labels depend on neither the batch, the devices, the process count nor where a run resumed.
Resuming and processes work as in `cotjax sample` (chain c belongs to process c mod count).
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np
from tqdm import tqdm

from cotjax import decode, engine, evaluate, faithfulness, load, paths, prm
from cotjax.records import CoTRecord
from cotjax.report import read_sample_dirs, read_samples
from cotjax.sample import check_manifest, shard_name
from cotjax.scoring import check_task

KIND = "labels"
MAX_STEPS = 64  # a chain with more steps is skipped (counted): n * steps prefixes each


@dataclasses.dataclass(frozen=True)
class Chain:
    index: int  # over every chain of the input, in (problem, sample) order
    row: dict  # the sample line
    chain: str
    spans: tuple[tuple[int, int], ...]


def read_manifest(samples: str) -> dict:
    path = paths.path(samples) / "manifest.json"
    if not path.exists():
        raise ValueError(f"{samples}: no manifest.json (not a `cotjax sample --out` directory)")
    return json.loads(path.read_text())


def read_chains(samples: str, task: str, split: str) -> tuple[list[Chain], dict]:
    """(chains with steps, skipped counts by reason) of a sample directory."""
    rows = sorted(read_sample_dirs([samples]), key=lambda r: (r["problem"], r["sample"]))
    chains, skipped = [], {}
    for row in rows:
        text = faithfulness.chain_of(row["generation"], task)
        spans = tuple(prm.split_steps(text, split))
        why = "no_steps" if not spans else "too_many_steps" if len(spans) > MAX_STEPS else None
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        chains.append(Chain(len(chains), row, text, spans))
    return chains, skipped


def _check_prompting(config, manifest: dict, samples: str) -> None:
    ev = evaluate._eval_settings(config)
    mine = {"template": config.data.template, "prompting": ev["prompting"]}
    for key, value in mine.items():
        if key in manifest and manifest[key] != value:
            raise ValueError(f"{samples}/manifest.json: the samples were prompted with "
                             f"{key}={manifest[key]!r}, the labelling config has {value!r}; "
                             f"give --config.data.template / --config.eval.prompting to match")


def _settings(config, source, samples, n, split, task, max_chains, count) -> dict:
    ev = evaluate._eval_settings(config)
    return {"model": source, "samples": str(samples), "rollouts": n, "split": split,
            "task": task, "max_chains": max_chains, "max_steps": MAX_STEPS,
            "template": config.data.template, "prompting": ev["prompting"],
            "temperature": float(ev["temperature"]), "top_k": int(ev["top_k"]),
            "top_p": float(ev["top_p"]), "seed": int(ev["seed"]),
            "max_new_tokens": int(ev["max_new_tokens"]), "stop": list(ev["stop"]),
            "shards": [shard_name(p, count, KIND) for p in range(count)]}


def _line(c: Chain, answers: dict[int, list], settings: dict, task: str) -> dict:
    steps, verdicts = [], prm.checker_labels(c.chain, c.spans)
    for k, (span, (label, kind)) in enumerate(zip(c.spans, verdicts), 1):
        soft, hard = prm.mc_label(answers[k], c.row["gold"], task)
        steps.append({"index": k, "text": c.chain[span[0]:span[1]], "span": list(span),
                      "checker": label, "kind": kind, "soft": soft, "hard": hard,
                      "answers": answers[k]})
    return {"problem": c.row["problem"], "id": c.row.get("id"), "sample": c.row["sample"],
            "question": c.row["question"], "gold": c.row["gold"],
            "generation": c.row["generation"], "chain": c.chain, "correct": c.row.get("correct"),
            "source": settings["samples"], "model": settings["model"], "split": settings["split"],
            "rollouts": settings["rollouts"], "steps": steps}


def run_label_steps(config, workdir: str | None = None, step=None, *, model: str | None = None,
                    samples: str, rollouts: int = 8, out: str, split: str = "lines",
                    max_chains: int = -1, overwrite: bool = False, progress: bool = True,
                    process_index: int | None = None, process_count: int | None = None) -> dict:
    """Label every step of the chains in `samples` with `rollouts` completions each (see the
    module docstring); returns the run's totals and the label agreement of its shard."""
    if rollouts < 1:
        raise ValueError(f"--rollouts must be >= 1, got {rollouts}")
    config = evaluate.resolve_config(config, workdir, model)
    ev = evaluate._eval_settings(config)
    manifest = read_manifest(samples)
    task = manifest.get("task", "gsm8k")
    check_task(task)
    if task != "gsm8k":
        raise ValueError(f"{samples}: label-steps reads numeric answers (gsm8k); task {task!r} "
                         "is not supported (sample lines do not carry multiple-choice options)")
    _check_prompting(config, manifest, samples)
    chains, skipped = read_chains(samples, task, split)
    if max_chains >= 0:
        chains = chains[:max_chains]
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    net, model_cfg, tokenizer, source = load.load_for_eval(config, workdir, step)
    settings = _settings(config, source, samples, rollouts, split, task, max_chains, pc)
    check_manifest(out, settings, overwrite, KIND)
    shard = paths.path(out) / shard_name(pi, pc, KIND)
    done = {(r["problem"], r["sample"]) for r in read_samples(shard, repair=True)}
    mine = [c for c in chains if c.index % pc == pi
            and (c.row["problem"], c.row["sample"]) not in done]
    print(f"labelling {len(mine)} chains ({sum(len(c.spans) for c in mine)} steps) x {rollouts} "
          f"completions with {source} -> {shard}; {len(done)} already there; skipped "
          f"{json.dumps(skipped)}", flush=True)

    recs = [CoTRecord(question=c.row["question"], chain="", answer=c.row["gold"]) for c in mine]
    _, ids = evaluate.eval_prompts(config, recs, tokenizer, evaluate.eval_exemplars(config))
    lead = " " if config.data.template == "plain" else ""
    prefixes, requests = {}, []
    for c, prompt in zip(mine, ids):
        for k in range(1, len(c.spans) + 1):
            text = lead + prm.prefix_through(c.chain, c.spans, k)
            key = c.index * MAX_STEPS + k - 1
            prefixes[key] = (c, k, text)
            requests.append(engine.Request(
                key, list(prompt) + decode.encode_prompt(tokenizer, text, add_special_tokens=False),
                range(rollouts)))
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    dec = evaluate.decode_settings(config, model_cfg, tokenizer, mesh)
    sampling = decode.SamplingConfig(float(ev["temperature"]), int(ev["top_k"]),
                                     float(ev["top_p"]))
    got: dict[int, dict[int, list]] = {c.index: {} for c in mine}
    left = {c.index: len(c.spans) * rollouts for c in mine}
    tokens, t0 = 0, time.perf_counter()
    with shard.open("a") as f, tqdm(total=len(requests) * rollouts, unit="completion",
                                    disable=not progress) as bar:
        for s, completion, _ in evaluate.stream(net, tokenizer, requests, dec, sampling=sampling,
                                                seed=settings["seed"]):
            c, k, text = prefixes[s.problem]
            got[c.index].setdefault(k, [None] * rollouts)[s.sample] = faithfulness.answer_of(
                text + completion.text, task)
            left[c.index] -= 1
            tokens += len(s.tokens)
            if not left[c.index]:
                f.write(json.dumps(_line(c, got.pop(c.index), settings, task)) + "\n")
                f.flush()
            bar.update(1)
    seconds = time.perf_counter() - t0
    agree = prm.agreement(read_samples(shard))
    totals = {"shard": str(shard), "chains": len(mine), "already_there": len(done),
              "skipped": skipped, "completions": len(requests) * rollouts,
              "new_tokens": tokens, "seconds": round(seconds, 2),
              "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0, **agree}
    paths.write_text(paths.path(out) / f"agreement-{pi:05d}.json", json.dumps(agree, indent=1))
    print(json.dumps(totals), flush=True)
    return totals
