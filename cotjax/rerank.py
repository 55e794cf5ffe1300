"""`cotjax rerank`: choose among N sampled chains with trained reward models (or, with none,
by the model-free selectors: the vote, the vote of the chains whose claims all hold).

sample shards (`cotjax sample --out=DIR`, N per problem; or a `cotjax eval` predictions file
with maj@N samples, scored again) -> each generation cut where its scores
are read (every step's end, then the generation's end: cotjax.prm.score_ends) -> packed rows
(several chains a row, segment ids keep them apart) -> the PRM's and the ORM's scores ->
selectors (cotjax.prm.select_answers) at N = 1, 2, 4, ... -> OUT/selection.json,
OUT/predictions.jsonl (every sample's scores, so selection can be redone without a model) and
OUT/accuracy_vs_n.png.

A reward model reads a chain as training made it read one: the question in the reward run's
template, then the generation piece by piece (cotjax.tokenize.reward_example). Accuracy at
N < N_max uses each problem's first N samples (sample index order): the same samples for every
selector, so the selectors' comparison at each N is paired.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cotjax import load, paths, prm, scoring, tokenize
from cotjax.model import KVCache
from cotjax.records import read_json_lines
from cotjax.report import paired_comparison, read_sample_dirs, summary_path_for

ROW_MULTIPLE = 128  # packed rows are at least the longest chain, rounded up to this
NEW_MULTIPLE = 32  # score_extensions: a child's new tokens are padded to a multiple of this
# and its cache holds a multiple of this many slots, the same for every group of a call, so a
# search compiles a few programs (each about 10 s on a 2-core CPU) rather than one per depth
SLOT_MULTIPLE = 512


def _round_up(n: int, multiple: int) -> int:
    return -(-max(n, 1) // multiple) * multiple


def pack_rows(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Examples (indices) in rows of at most `seq_len` tokens: first fit, longest first."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > seq_len:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than a row ({seq_len})")
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(seq_len - lengths[i])
    return rows


@functools.partial(jax.jit, static_argnums=0)
def _scores(graphdef, state, inputs, positions, segment_ids):
    model = nnx.merge(graphdef, state)
    x_BTD, _ = model.hidden(inputs, positions, segment_ids)
    return jax.nn.sigmoid(model.reward(x_BTD))


def score_examples(model, examples: Sequence[tokenize.Example], reads: Sequence[np.ndarray],
                   seq_len: int = 1024, batch_rows: int = 8) -> list[np.ndarray]:
    """The reward model's probabilities at each example's read positions, with the examples
    packed several to a row (a chain's scores do not depend on its row-mates: attention stays
    within a segment)."""
    if not examples:
        return []
    longest = max(len(e) for e in examples)
    seq_len = max(seq_len, _round_up(longest, ROW_MULTIPLE))
    rows = pack_rows([len(e) for e in examples], seq_len)
    graphdef, state = nnx.split(model)
    out: list[np.ndarray | None] = [None] * len(examples)
    for b in range(0, len(rows), batch_rows):
        group = rows[b:b + batch_rows]
        arrays = {k: np.zeros((batch_rows, seq_len), np.int32)
                  for k in ("inputs", "positions", "segment_ids")}
        where = []
        for r, row in enumerate(group):
            at = 0
            for seg, i in enumerate(row, 1):
                n = len(examples[i])
                arrays["inputs"][r, at:at + n] = examples[i].tokens
                arrays["positions"][r, at:at + n] = np.arange(n)
                arrays["segment_ids"][r, at:at + n] = seg
                where.append((i, r, at))
                at += n
        probs = np.asarray(jax.device_get(_scores(
            graphdef, state, *(jnp.asarray(arrays[k])
                               for k in ("inputs", "positions", "segment_ids")))))
        for i, r, at in where:
            out[i] = probs[r, at + np.asarray(reads[i])]
    return out


@functools.partial(jax.jit, static_argnums=(0, 5))
def _prefill_scores(graphdef, state, inputs, positions, segment_ids, slots):
    model = nnx.merge(graphdef, state)
    cache = KVCache.empty(model.cfg, inputs.shape[0], slots)
    x_BTD, cache = model.hidden(inputs, positions, segment_ids, cache)
    return jax.nn.sigmoid(model.reward(x_BTD)), cache


@functools.partial(jax.jit, static_argnums=0)
def _extend_scores(graphdef, state, cache, rows, inputs, positions, segment_ids):
    """Scores of `inputs` [B, T], row b continuing cache row `rows[b]` from slot
    `positions[b, 0]`. Slots the parent filled past that point are overwritten by the new
    tokens (pads included, as empty slots) or sit at later positions, which causal attention
    by position never reads."""
    model = nnx.merge(graphdef, state)

    def take(a):
        return jnp.take(a, rows, axis=0)

    picked = KVCache(tuple(map(take, cache.k_BKHS)), tuple(map(take, cache.v_BKSH)),
                     take(cache.segment_ids_BS), take(cache.positions_BS), positions[:, 0])
    x_BTD, _ = model.hidden(inputs, positions, segment_ids, picked)
    return jax.nn.sigmoid(model.reward(x_BTD))


def _padded(seqs: Sequence[np.ndarray], rows: int, length: int, starts=None) -> dict:
    """Right-padded inputs, positions (from `starts`, else 0) and segment ids (1, pads 0)."""
    arrays = {k: np.zeros((rows, length), np.int32) for k in ("inputs", "positions",
                                                              "segment_ids")}
    for r, seq in enumerate(seqs):
        start = 0 if starts is None else starts[r]
        arrays["inputs"][r, :len(seq)] = seq
        arrays["positions"][r] = start + np.arange(length)
        arrays["segment_ids"][r, :len(seq)] = 1
    return {k: jnp.asarray(v) for k, v in arrays.items()}


def score_extensions(model, parents: Sequence[np.ndarray], children: Sequence[tuple[int, np.ndarray]],
                     reads: Sequence[np.ndarray], batch_rows: int = 8) -> list[np.ndarray]:
    """The reward model's probabilities at each child's read positions, where child i
    (parent index, tokens) continues `parents[parent index]` (a step search's candidates and
    the partial chains they grew from): each parent is read once, and its children reuse its
    keys and values for their common token prefix and run only the tokens after it. The same
    scores as `score_examples` on the children, up to float rounding (tested)."""
    out: list[np.ndarray | None] = [None] * len(children)
    graphdef, state = nnx.split(model)
    kept = {}  # child -> tokens shared with its parent (at least one token left to run)
    for i, (p, tokens) in enumerate(children):
        n = min(len(parents[p]), len(tokens) - 1)
        kept[i] = int(np.argmin(np.append(parents[p][:n] == tokens[:n], False)))
    slots = _round_up(max([_round_up(len(t), ROW_MULTIPLE) for t in parents] + [0]) + max(
        [_round_up(len(t) - kept[i], NEW_MULTIPLE) for i, (_, t) in enumerate(children)] + [0]),
        SLOT_MULTIPLE)
    for g in range(0, len(parents), batch_rows):
        group = list(range(g, min(g + batch_rows, len(parents))))
        mine = [i for i, (p, _) in enumerate(children) if g <= p < g + batch_rows]
        if not mine:
            continue
        longest = _round_up(max(len(parents[p]) for p in group), ROW_MULTIPLE)
        new = _round_up(max(len(children[i][1]) - kept[i] for i in mine), NEW_MULTIPLE)
        a = _padded([parents[p] for p in group], batch_rows, longest)
        parent_probs, cache = _prefill_scores(graphdef, state, a["inputs"], a["positions"],
                                              a["segment_ids"], slots)
        parent_probs = np.asarray(jax.device_get(parent_probs))
        step = 4 * batch_rows
        for c in range(0, len(mine), step):
            part = mine[c:c + step]
            starts = [kept[i] for i in part] + [0] * (step - len(part))
            b = _padded([children[i][1][kept[i]:] for i in part], step, new, starts)
            rows = jnp.asarray([children[i][0] - g for i in part] + [0] * (step - len(part)))
            probs = np.asarray(jax.device_get(_extend_scores(
                graphdef, state, cache, rows, b["inputs"], b["positions"], b["segment_ids"])))
            for r, i in enumerate(part):
                p, k = children[i][0] - g, kept[i]
                whole = np.concatenate([parent_probs[p, :k], probs[r, :len(children[i][1]) - k]])
                out[i] = whole[np.asarray(reads[i])]
    return out


def check_reward_run(workdir: str, objective: str, flag: str | None = None) -> None:
    """A clear error, before any model loads, when `workdir` is not a reward run trained
    with `objective` (a policy, or the other reward objective)."""
    config, cfg = load.ckpt_lib.read_run_config(workdir)
    flag = flag or f"--{objective}"
    if cfg is not None:
        load.require_head(cfg, "reward", workdir, flag)
    trained = config.get("train", {}).get("objective")
    if trained != objective:
        raise ValueError(f"{workdir} was trained with train.objective={trained}; {flag} needs "
                         f"one trained with train.objective={objective}")


def load_reward_model(workdir: str, step, objective: str):
    """(model, tokenizer, run config, description) of a reward run; a clear error for a
    policy or for a reward model trained with the other objective."""
    check_reward_run(workdir, objective)
    step = load.parse_step(step)
    if step == "base":
        raise ValueError(f"--step=base: the model {workdir} started from has no trained reward "
                         "head; give a checkpoint step or none (the latest)")
    if step is None:  # name the step that scores, not "latest"
        step = load.ckpt_lib.latest_step(workdir)
    model, _, tokenizer, config = load.load_run_model(workdir, step)
    return model, tokenizer, config, f"{workdir} step {step}"


def score_texts(model, tokenizer, config, texts: Sequence[tuple[str, str, str]], task: str
                ) -> list[np.ndarray | None]:
    """A reward model's probabilities at the step ends of each (question, generation, where)
    (`where` names it in errors), read as the run was trained (`config`: its template, step
    rule and row length); None for a blank generation."""
    examples, reads, keep = [], [], []
    rule = config.data.get("labels_split", "lines")
    for i, (question, text, where) in enumerate(texts):
        if not text.strip():
            continue
        ends = prm.score_ends(text, task, rule, where=where)
        ex, pos = tokenize.reward_example(question, text, ends, [None] * len(ends), tokenizer,
                                          config.data.template)
        examples.append(ex)
        reads.append(pos)
        keep.append(i)
    out: list[np.ndarray | None] = [None] * len(texts)
    for i, s in zip(keep, score_examples(model, examples, reads, int(config.data.seq_len)),
                    strict=True):
        out[i] = s
    return out


def score_rows(rows: Sequence[dict], workdir: str, step, objective: str, task: str
               ) -> tuple[list[list[float]], str, float]:
    """(scores per sample row, description, seconds) of one reward model over sample rows;
    an empty generation scores 0."""
    model, tokenizer, config, desc = load_reward_model(workdir, step, objective)
    t0 = time.perf_counter()
    got = score_texts(model, tokenizer, config, [
        (r["question"], r["generation"], f"problem {r['problem']} sample {r['sample']}")
        for r in rows], task)
    scores = [[0.0] if s is None else [round(float(v), 5) for v in s] for s in got]
    return scores, desc, time.perf_counter() - t0


def by_problem(rows: Sequence[dict]) -> dict:
    """Sample rows grouped by problem, each group in sample order."""
    groups: dict = {}
    for row in sorted(rows, key=lambda r: (r["problem"], r["sample"])):
        groups.setdefault(row["problem"], []).append(row)
    return groups


def selection_table(groups: dict, prm_scores: dict | None, orm_scores: dict | None, n: int,
                    how: str, task: str) -> dict[str, dict]:
    """{problem: select_answers(...)} over each problem's first n samples."""
    out = {}
    for p, rows in groups.items():
        rows = rows[:n]
        out[p] = prm.select_answers(
            [r["extracted"] for r in rows], rows[0]["gold"], task,
            step_scores=[prm_scores[(p, r["sample"])] for r in rows] if prm_scores else None,
            outcome=[orm_scores[(p, r["sample"])][-1] for r in rows] if orm_scores else None,
            how=how, checked=[bool(r["all_steps_valid"]) for r in rows]
            if all("all_steps_valid" in r for r in rows) else None)
    return out


def accuracies(table: dict[str, dict]) -> dict[str, dict]:
    selectors = next(iter(table.values())).keys()
    return {s: {"accuracy": round(sum(t[s]["correct"] for t in table.values()) / len(table), 4),
                "n": len(table)} for s in selectors}


def ns_upto(n_max: int) -> list[int]:
    """1, 2, 4, ... up to n_max (and n_max itself)."""
    ns = [n for n in (2**i for i in range(12)) if n < n_max]
    return ns + [n_max]


def score_all(rows: Sequence[dict], prm_run: str | None, orm_run: str | None, step=None,
              task: str = "gsm8k") -> tuple[dict, dict, dict]:
    """({"prm"|"orm": {(problem, sample): scores}}, descriptions, seconds) of the given reward
    models over sample rows."""
    scores, desc, seconds = {}, {}, {}
    for name, run in (("prm", prm_run), ("orm", orm_run)):
        if run:
            got, desc[name], seconds[name] = score_rows(rows, run, step, name, task)
            scores[name] = {(r["problem"], r["sample"]): s for r, s in zip(rows, got)}
            print(f"scored {len(rows)} samples with {desc[name]} in {seconds[name]:.0f} s",
                  flush=True)
    return scores, desc, seconds


def select_all(groups: dict, scores: dict, aggregate: str, task: str) -> tuple[dict, dict]:
    """(the selectors' comparison, {problem: selections at the largest N}) of scored groups
    that all hold the same number of samples."""
    n_max = len(next(iter(groups.values())))

    def table(n, how=aggregate):
        return selection_table(groups, scores.get("prm"), scores.get("orm"), n, how, task)

    final = table(n_max)
    result = {**accuracies(final), "problems": len(groups), "samples_per_problem": n_max,
              "aggregate": aggregate}
    majority = {p: t["majority"]["correct"] for p, t in final.items()}
    result["paired_vs_majority"] = {
        s: paired_comparison({p: t[s]["correct"] for p, t in final.items()}, majority)
        for s in ("checked_majority", "orm_best", "prm_best", "prm_weighted")
        if s in next(iter(final.values()))}
    if "prm_weighted" in result["paired_vs_majority"]:
        result["mcnemar_p"] = result["paired_vs_majority"]["prm_weighted"]["mcnemar_p"]
    result["by_n"] = {str(n): {s: v["accuracy"] for s, v in accuracies(table(n)).items()}
                      for n in ns_upto(n_max)}
    # How well each score tells right samples from wrong ones, over all samples (selection
    # needs this within a problem; a score that only knows which problems are hard helps none).
    chain_score = {}
    if "orm" in scores:
        chain_score["orm"] = lambda key: scores["orm"][key][-1]  # noqa: E731
    if "prm" in scores:
        for how in prm.AGGREGATES:
            chain_score[f"prm_{how}"] = functools.partial(
                lambda key, how: prm.aggregate(scores["prm"][key], how), how=how)
    result["sample_auroc"], result["within_problem_auroc"] = {}, {}
    rows = [r for g in groups.values() for r in g]
    for name, score in chain_score.items():
        result["sample_auroc"][name] = prm.auroc(
            [score((r["problem"], r["sample"])) for r in rows], [r["correct"] for r in rows])
        mixed = [prm.auroc([score((r["problem"], r["sample"])) for r in g],
                           [r["correct"] for r in g]) for g in groups.values()]
        mixed = [a for a in mixed if a is not None]  # problems with right and wrong samples
        result["within_problem_auroc"][name] = {
            "mean": round(sum(mixed) / len(mixed), 4) if mixed else None, "problems": len(mixed)}
    if "prm" in scores:
        result["by_aggregate"] = {
            how: {s: v["accuracy"] for s, v in accuracies(table(n_max, how)).items()
                  if s in ("prm_best", "prm_weighted")} for how in prm.AGGREGATES}
    return result, final


def run_rerank(samples: Sequence[str], out: str, *, prm_run: str | None = None,
               orm_run: str | None = None, step=None, aggregate: str = "min",
               max_problems: int = -1) -> dict:
    """Score the samples with the given reward models and write the selectors' comparison
    (see the module docstring); returns selection.json's content."""
    prm.aggregate([1.0], aggregate)  # a bad name fails before anything loads
    if len(samples) == 1 and paths.path(samples[0]).is_file():
        rows, task = read_eval_samples(samples[0])
    else:
        manifest = paths.path(samples[0]) / "manifest.json"
        task = json.loads(manifest.read_text()).get("task", "gsm8k") if manifest.exists() \
            else "gsm8k"
        rows = read_sample_dirs(samples)
    if not prm_run and not orm_run:
        print("no --prm or --orm: the model-free selectors only (majority, checked_majority, "
              "pass_at_n)", flush=True)
    keys = [(r["problem"], r["sample"]) for r in rows]
    if len(set(keys)) < len(keys):
        raise ValueError(f"{', '.join(samples)}: (problem, sample) pairs repeat; give one "
                         "`cotjax sample` directory")
    groups = by_problem(rows)
    if max_problems >= 0:
        groups = dict(list(groups.items())[:max_problems])
    if not groups:
        raise ValueError(f"{', '.join(samples)}: no samples")
    n_max = min(len(g) for g in groups.values())
    if n_max != max(len(g) for g in groups.values()):
        print(f"problems have {n_max} to {max(len(g) for g in groups.values())} samples: "
              f"selecting among the first {n_max} of each", flush=True)
    groups = {p: g[:n_max] for p, g in groups.items()}
    rows = [r for g in groups.values() for r in g]
    scores, desc, seconds = score_all(rows, prm_run, orm_run, step, task)
    result, final = select_all(groups, scores, aggregate, task)
    result.update({"task": task, "samples": list(samples), "prm": desc.get("prm"),
                   "orm": desc.get("orm"),
                   "score_seconds": {k: round(v, 1) for k, v in seconds.items()}})
    write_rerank(out, groups, n_max, scores, final, result)
    return result


def read_eval_samples(path: str) -> tuple[list[dict], str]:
    """(sample rows, task) of a `cotjax eval` predictions file with maj@N samples (each row's
    `samples`, in order), every sample scored again from its generation (answers and step
    reports, as `cotjax sample` writes them); the task is the summary's beside it."""
    summary = summary_path_for(path)
    task = json.loads(summary.read_text()).get("task", "gsm8k") if summary.exists() \
        else "gsm8k"
    rows = []
    for n, (where, row) in enumerate(read_json_lines(path)):
        if not isinstance(row.get("samples"), list) or not row["samples"]:
            raise ValueError(f"{where}: no 'samples' list (rerank reads `cotjax sample` "
                             "directories or `cotjax eval` predictions with maj@N samples)")
        rows += [{"problem": n, "sample": k, "id": row.get("id"), "question": row["question"],
                  "generation": x["generation"],
                  **scoring.score_prediction(x["generation"], row["gold"], task)}
                 for k, x in enumerate(row["samples"])]
    return rows, task


def read_rerank(out: str) -> tuple[dict, dict, dict]:
    """(sample groups, {"prm"|"orm": {(problem, sample): scores}}, selection.json) of a rerank's
    OUT directory."""
    out_dir = paths.path(out)
    old = json.loads((out_dir / "selection.json").read_text())
    groups, scores = {}, {}
    for line in (out_dir / "predictions.jsonl").read_text().splitlines():
        p = json.loads(line)
        groups[p["problem"]] = [{"problem": p["problem"], "sample": s["sample"],
                                 "extracted": s["answer"], "correct": s["correct"],
                                 "gold": p["gold"], **({"all_steps_valid": s["all_steps_valid"]}
                                                       if "all_steps_valid" in s else {})}
                                for s in p["samples"]]
        for s in p["samples"]:
            for k in ("prm", "orm"):
                if k in s:
                    scores.setdefault(k, {})[(p["problem"], s["sample"])] = s[k]
    return groups, scores, old


def reselect(out: str, aggregate: str | None = None) -> dict:
    """selection.json again from OUT/predictions.jsonl (every sample's scores are there): no
    model needed; the provenance fields are kept from OUT/selection.json."""
    groups, scores, old = read_rerank(out)
    result, _ = select_all(groups, scores, aggregate or old["aggregate"], old.get("task", "gsm8k"))
    keep = ("task", "samples", "prm", "orm", "score_seconds")
    return {**result, **{k: old[k] for k in keep if k in old}}


def combine(outs: Sequence[str]) -> dict:
    """One comparison from several reranks of the same samples (say a PRM's over every problem
    and an ORM's over the first half): each selector, its paired test against the majority and
    its accuracy-vs-N row come from the first OUT that has it, with that OUT's problems as its n
    (`source` says which); so do the AUROCs and `by_aggregate`. The first OUT must hold every
    problem of the others, so the model-free selectors cover them all. Scoring runs are long,
    so each reward model is scored once and the comparison is assembled from the saved scores;
    no model loads."""
    if not outs:
        raise ValueError("combine: no rerank directories")
    runs = {out: read_rerank(out) for out in outs}
    first, (first_groups, _, first_sel) = outs[0], runs[outs[0]]
    for out, (groups, _, sel) in runs.items():
        if set(groups) - set(first_groups):
            raise ValueError(f"{out}: problems the first run ({first}) lacks; give the run "
                             "with every problem first")
        if {len(g) for g in groups.values()} != {len(g) for g in first_groups.values()} or \
                sel.get("task", "gsm8k") != first_sel.get("task", "gsm8k"):
            raise ValueError(f"{out}: another task or number of samples per problem than "
                             f"{first}")
        for p, rows in groups.items():
            if _sample_keys(rows) != _sample_keys(first_groups[p]):
                raise ValueError(f"{out}: problem {p}'s samples differ from {first}'s; "
                                 "combine reranks of one sample set")
    result, source, by_n = {}, {}, {}
    for out, (groups, scores, sel) in runs.items():
        again, _ = select_all(groups, scores, sel["aggregate"], sel.get("task", "gsm8k"))
        for s in prm.SELECTORS:
            if s in again and s not in result:
                result[s], source[s] = again[s], out
                if s in again["paired_vs_majority"]:
                    result.setdefault("paired_vs_majority", {})[s] = again["paired_vs_majority"][s]
                for n, row in again["by_n"].items():
                    by_n.setdefault(n, {})[s] = row[s]
        for key in ("sample_auroc", "within_problem_auroc"):
            for name, v in again[key].items():
                result.setdefault(key, {}).setdefault(name, v)
        if "by_aggregate" in again:
            result.setdefault("by_aggregate", again["by_aggregate"])
    if "prm_weighted" in result:
        result["mcnemar_p"] = result["paired_vs_majority"]["prm_weighted"]["mcnemar_p"]
        result["aggregate"] = runs[source["prm_weighted"]][2]["aggregate"]
    result.update({"task": first_sel.get("task", "gsm8k"), "problems": len(first_groups),
                   "samples_per_problem": len(next(iter(first_groups.values()))),
                   "source": source, "by_n": by_n,
                   "runs": {out: {k: sel.get(k) for k in ("problems", "samples", "prm", "orm")}
                            for out, (_, _, sel) in runs.items()}})
    return result


def _sample_keys(rows: Sequence[dict]) -> list[tuple]:
    return [(r["sample"], r["extracted"], r["correct"], r["gold"]) for r in rows]


def write_combined(outs: Sequence[str], out: str) -> dict:
    """combine(outs) as OUT/selection.json and OUT/accuracy_vs_n.png (each line labelled with
    its selector's problem count where they differ)."""
    result = combine(outs)
    out_dir = paths.path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths.write_text(out_dir / "selection.json", json.dumps(result, indent=1) + "\n")
    counts = {s: result[s]["n"] for s in result["source"]}
    labels = {s: f"{s} ({n} problems)" for s, n in counts.items()} \
        if len(set(counts.values())) > 1 else None
    plot_accuracy_vs_n(result["by_n"], out_dir / "accuracy_vs_n.png", labels)
    return result


def write_rerank(out: str, groups: dict, n_max: int, scores: dict, final: dict,
                 result: dict) -> None:
    out_dir = paths.path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for p, rows in groups.items():
        lines.append(json.dumps({
            "problem": p, "id": rows[0].get("id"), "gold": rows[0]["gold"],
            "selected": final[p],
            "samples": [{"sample": r["sample"], "answer": r["extracted"],
                         "correct": r["correct"],
                         **({"all_steps_valid": r["all_steps_valid"]}
                            if "all_steps_valid" in r else {}),
                         **{k: s[(p, r["sample"])] for k, s in scores.items()}}
                        for r in rows[:n_max]]}))
    paths.write_text(out_dir / "predictions.jsonl", "\n".join(lines) + "\n")
    paths.write_text(out_dir / "selection.json", json.dumps(result, indent=1) + "\n")
    plot_accuracy_vs_n(result["by_n"], out_dir / "accuracy_vs_n.png")


def plot_accuracy_vs_n(by_n: dict[str, dict[str, float]], path,
                       labels: dict[str, str] | None = None) -> None:
    """Every selector's accuracy against N (log2 axis), each line named by `labels` or its
    selector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(by_n, key=int)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s in by_n[ns[-1]]:
        ax.plot([int(n) for n in ns], [by_n[n][s] for n in ns], marker="o",
                label=(labels or {}).get(s, s))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("samples per problem (N)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
