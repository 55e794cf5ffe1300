"""`cotjax sample`: K chains per problem through the sampling engine, scored, in resumable shards.

records (the config's train or validation split, or a raw GSM8K / AQuA-RAT file) -> prompts
exactly as `cotjax eval` builds them (cotjax.evaluate) -> cotjax.engine -> text (decode.TextRule:
EOS and stop strings as eval) -> answers and step checks (cotjax.scoring) ->
OUT/samples-PPPPP-of-NNNNN.jsonl, one shard per process, and OUT/manifest.json.

Resuming. The manifest holds every setting the samples depend on; a rerun with the same
settings reads its shard, keeps every complete line, cuts a half-written last line, and draws
only the (problem, sample) pairs still missing. Keys are per (problem, sample) (cotjax.engine),
so the resumed file holds what one uninterrupted run would have written, in another order.
Different settings in the same directory are refused (or replaced with --overwrite).

Processes. Problem i belongs to process i mod process_count; each process decodes its problems
on its own devices (rows sharded over them) and writes its own shard.

STaR rationalisation (`hint=True`): the prompt carries the gold answer as a hint; the lines keep
the question without it (`"hint": true`), so what is trained on never sees the hint.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time

import jax
import numpy as np
from tqdm import tqdm

from cotjax import decode, engine, evaluate, load, paths
from cotjax.report import read_samples
from cotjax.scoring import check_task, normalise_gold, score_prediction

MANIFEST = "manifest.json"
HINT = "\n(Hint: the final answer is {answer}.)"


def shard_name(process: int, count: int, kind: str = "samples") -> str:
    return f"{kind}-{process:05d}-of-{count:05d}.jsonl"


def check_manifest(out, settings: dict, overwrite: bool, kind: str = "samples") -> None:
    """Refuses an output directory written with other settings (naming the first that differs),
    or clears its `kind` shards with `overwrite`; writes the manifest of a new one."""
    out = paths.path(out)
    manifest = out / MANIFEST
    if manifest.exists() and not overwrite:
        old = json.loads(manifest.read_text())
        changed = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        if changed:
            k = changed[0]
            raise ValueError(
                f"{manifest}: the {kind} there were made with {k}={old.get(k)!r}, this run has "
                f"{k}={settings.get(k)!r}; use another --out, or --overwrite to start over")
        return
    if overwrite and out.exists():
        for f in out.glob(f"{kind}-*.jsonl"):
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        paths.write_text(manifest, json.dumps(settings, indent=1) + "\n")


def _settings(config, source: str, data_desc: str, n_problems: int, k: int, hint: bool,
              task: str, count: int) -> dict:
    ev = evaluate._eval_settings(config)
    return {"model": source, "data": data_desc, "problems": n_problems, "k": k, "task": task,
            "prompting": ev["prompting"], "template": config.data.template,
            "temperature": float(ev["temperature"]), "top_k": int(ev["top_k"]),
            "top_p": float(ev["top_p"]), "seed": int(ev["seed"]),
            "max_new_tokens": int(ev["max_new_tokens"]), "stop": list(ev["stop"]), "hint": hint,
            "calculator": bool(ev["calculator"]),
            "shards": [shard_name(p, count) for p in range(count)]}


def _hinted(rec, task: str):
    return dataclasses.replace(rec, question=rec.question + HINT.format(
        answer=normalise_gold(rec.answer, task)))


def run_sample(config, workdir: str | None = None, step=None, *, model: str | None = None,
               data: str | None = None, k: int = 4, out: str, overwrite: bool = False,
               hint: bool = False, task: str | None = None, progress: bool = True,
               process_index: int | None = None, process_count: int | None = None) -> dict:
    """Draw `k` samples per problem of `data` (train | validation | a file) into `out`; returns
    the run's totals. The model: `workdir`'s checkpoint at `step`, else `model` or the config's."""
    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    config = evaluate.resolve_config(config, workdir, model)
    ev = evaluate._eval_settings(config)
    task = task or ev["task"]
    check_task(task)
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    recs, data_desc = evaluate.load_eval_records(data, task, config)
    if ev["max_examples"] >= 0:
        recs = recs[:ev["max_examples"]]
    net, model_cfg, tokenizer, source = load.load_for_eval(config, workdir, step)
    settings = _settings(config, source, data_desc, len(recs), k, hint, task, pc)
    check_manifest(out, settings, overwrite)
    shard = paths.path(out) / shard_name(pi, pc)
    done = {(r["problem"], r["sample"]) for r in read_samples(shard, repair=True)}

    mine = [i for i in range(len(recs)) if i % pc == pi]
    prompt_recs = [_hinted(recs[i], task) if hint else recs[i] for i in mine]
    _, ids = evaluate.eval_prompts(config, prompt_recs, tokenizer,
                                   evaluate.eval_exemplars(config))
    requests = [engine.Request(i, p, [s for s in range(k) if (i, s) not in done])
                for i, p in zip(mine, ids)]
    requests = [r for r in requests if r.samples]
    todo = sum(len(r.samples) for r in requests)
    print(f"sampling {source}: {len(mine)} of {len(recs)} problems ({data_desc}) x {k} -> "
          f"{shard}; {len(done)} already there, {todo} to draw", flush=True)

    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    dec = evaluate.decode_settings(config, model_cfg, tokenizer, mesh)
    sampling = decode.SamplingConfig(float(ev["temperature"]), int(ev["top_k"]),
                                     float(ev["top_p"]))
    fixed = {k: settings[k] for k in ("model", "prompting", "template", "temperature", "top_k",
                                      "top_p", "seed", "hint", "calculator")}
    tokens = correct = 0
    t0 = time.perf_counter()
    host = collections.Counter()  # where the time went: rounds, decoding, hook, stop checks
    stream = evaluate.stream(net, tokenizer, requests, dec, sampling=sampling,
                             seed=settings["seed"], use_calculator=settings["calculator"],
                             stats=host)
    prompt_len = {r.problem: len(r.prompt) for r in requests}
    with shard.open("a") as f, tqdm(total=todo, unit="sample", disable=not progress) as bar:
        for s, c, calls in stream:
            rec = recs[s.problem]
            row = {"problem": s.problem, "id": rec.id, "sample": s.sample,
                   "question": rec.question, "prompt_tokens": prompt_len[s.problem],
                   "generation": c.text, "finish": c.finish, "new_tokens": len(s.tokens),
                   "logprob": round(s.logprob, 4), **fixed,
                   **score_prediction(c.text, rec.answer, task),
                   **evaluate.calculator_fields(calls)}
            f.write(json.dumps(row) + "\n")
            f.flush()
            tokens += len(s.tokens)
            correct += row["correct"]
            bar.update(1)
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - t0):.0f}", refresh=False)
    seconds = time.perf_counter() - t0
    totals = {"shard": str(shard), "drawn": todo, "already_there": len(done),
              "new_tokens": tokens, "seconds": round(seconds, 2),
              "samples_per_s": round(todo / seconds, 3) if seconds else 0.0,
              "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
              "correct_drawn": correct,
              "engine": {k: round(v, 2) if isinstance(v, float) else v
                         for k, v in sorted(host.items())}}
    print(json.dumps(totals), flush=True)
    return totals


def main(flags) -> None:
    """`cotjax sample --config=C (--workdir=W [--step=S] | --model=SPEC)
    --data=train|validation|FILE --k=K --out=DIR [--hint] [--overwrite]`."""
    run_sample(flags.config, flags.workdir, flags.step, model=flags.model, data=flags.data,
               k=flags.k, out=flags.out, overwrite=flags.overwrite, hint=flags.hint,
               task=flags.task)
