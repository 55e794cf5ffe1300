"""`cotjax search`: step-level beam search guided by a process reward model (issue 23's stretch).

problem prompt -> W partial chains (at first one, empty) -> each extended by E sampled
continuations of one step (the sampling engine, a row stopped at the step's end) -> every
candidate scored by the PRM at its step ends (cotjax.rerank, aggregated by min | prod | last |
step_min) ->
the W best kept -> until every kept chain is finished (EOS or a stop string) or D steps were
taken -> the best-scored finished chain's answer, and the PRM-weighted vote of the kept chains.
OUT/predictions.jsonl (each problem's answer row and its final beam) and OUT/summary.json.

A step is a line (the PRM's `lines` rule): it ends at the first newline after some text, and
what the engine drew past that newline is dropped (drawn again at the next depth). A partial
chain is continued as text: its step texts are tokenized after the prompt, so its tokens may
split differently from the ones the model drew (the PRM reads it as text too).

Keys. Expansion e of beam b at depth d of problem p is the engine's (problem, sample) pair
((p * (D + 1) + d) * W + b, e): the search depends on the seed and (W, E, D), not on the
batch size, the devices or the order rows finish in.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from cotjax import decode, engine, evaluate, load, paths, prm, rerank, tokenize
from cotjax.answers import answers_equal, majority_vote
from cotjax.scoring import check_task, score_prediction, summarize


@dataclasses.dataclass(frozen=True)
class Beam:
    text: str  # the chain so far: whole steps, each ending in a newline unless finished
    score: float  # the PRM's aggregated score of `text` (0 before any step)
    finish: str  # "" while open; eos | stop | length (a step over its token limit) | steps
    new_tokens: int = 0  # tokens the model drew for the kept steps


def step_end(text: str) -> int | None:
    """Index just past the first newline that follows some non-blank text (None: no step end
    yet), so blank lines before a step never make empty steps."""
    start = len(text) - len(text.lstrip())
    at = text.find("\n", start)
    return None if at < 0 or start == len(text) else at + 1


def beam_search(n_problems: int, expand: Callable, score: Callable, *, width: int,
                expand_k: int, max_steps: int, distinct: bool = True) -> list[list[Beam]]:
    """Each problem's final beam, best first. `expand([(problem, beam index, depth, Beam)])`
    returns, per item, `expand_k` Beams one step longer (finished ones with their finish);
    `score([(problem, text, parent text)])` the PRM score of each text (the parent: the
    partial chain it grew from). Finished chains stay in the beam
    (not expanded) while they rank in the top `width`; after `max_steps` expansions the open
    ones are closed with finish "steps". `distinct`: a text already in the beam is not kept
    again (the beam holds `width` different chains while there are as many)."""
    if min(width, expand_k, max_steps) < 1:
        raise ValueError(f"beam search needs width, expansions and steps >= 1, got {width}, "
                         f"{expand_k}, {max_steps}")
    beams = [[Beam("", 0.0, "")] for _ in range(n_problems)]
    for depth in range(max_steps):
        todo = [(p, b, depth, beam) for p in range(n_problems)
                for b, beam in enumerate(beams[p]) if not beam.finish]
        if not todo:
            break
        grown = expand(todo)
        cands = [(p, beam, c) for (p, _, _, beam), got in zip(todo, grown, strict=True)
                 for c in got]
        scores = score([(p, c.text, beam.text) for p, beam, c in cands])
        pool: dict[int, list[Beam]] = {p: [b for b in beams[p] if b.finish] for p, *_ in todo}
        for (p, _, c), s in zip(cands, scores, strict=True):
            pool[p].append(dataclasses.replace(c, score=float(s)))
        for p, options in pool.items():  # a stable sort: ties keep the earlier candidate
            ranked = sorted(options, key=lambda b: -b.score)
            if distinct:
                ranked = [b for i, b in enumerate(ranked)
                          if all(b.text != a.text for a in ranked[:i])]
            beams[p] = ranked[:width]
    return [[b if b.finish else dataclasses.replace(b, finish="steps") for b in bs]
            for bs in beams]


def choose(beam: Sequence[Beam], gold: str, task: str) -> dict:
    """A problem's answer from its final beam: the best-scored finished chain that states an
    answer (else the best chain), and the vote of every kept chain's answer weighted by its
    score (`prm_weighted`)."""
    done = [b for b in beam if b.finish in ("eos", "stop")] or list(beam)
    scored = [score_prediction(b.text, gold, task) for b in done]
    answered = [i for i, s in enumerate(scored) if s["extracted"] is not None] or [0]
    best = max(answered, key=lambda i: (done[i].score, -i))
    weighted = majority_vote([s["extracted"] for s in scored], task, [b.score for b in done])
    return {"best": done[best], "scores": scored[best], "weighted": weighted,
            "weighted_correct": answers_equal(weighted, gold, task)}


class EngineExpander:
    """`expand` for `beam_search` through the sampling engine: a partial chain continues from
    its prompt plus its text; a row stops at the step's end or the eval's stop strings."""

    def __init__(self, net, tokenizer, prompts: Sequence[Sequence[int]], settings: dict,
                 sampling, seed: int, *, width: int, expand_k: int, max_steps: int,
                 step_tokens: int):
        self.net, self.tok, self.prompts, self.settings = net, tokenizer, prompts, settings
        self.sampling, self.seed = sampling, seed
        self.W, self.E, self.D = width, expand_k, max_steps
        self.step_tokens = step_tokens
        self.rule = decode.TextRule(tokenizer, settings["eos_ids"], settings["stop"])
        self.new_tokens, self.seconds = 0, 0.0
        # An open chain holds fewer than max_new_tokens drawn tokens: with room for the longest
        # prompt plus those, every depth runs the engine's programs compiled at the first.
        self.slots = max(map(len, prompts), default=0) + settings["max_new_tokens"]

    def _stop(self, _problem, tokens) -> bool:
        text = self.rule.text(tokens)
        return step_end(text) is not None or decode.find_stop(text, self.rule.stop)[1] is not None

    def _grow(self, beam: Beam, tokens: list[int]) -> Beam:
        done = self.rule.complete(tokens)
        end = step_end(done.text)
        drawn = beam.new_tokens + len(tokens)
        if end is not None:  # tokens past the newline are dropped (drawn again next depth)
            # a chain past eval.max_new_tokens drawn tokens is closed as cut by the length limit
            over = drawn >= self.settings["max_new_tokens"]
            return Beam(beam.text + done.text[:end], 0.0, "length" if over else "", drawn)
        return Beam(beam.text + done.text, 0.0, done.finish, drawn)

    def __call__(self, todo):
        t0 = time.perf_counter()
        requests, where = [], {}
        for i, (p, b, depth, beam) in enumerate(todo):
            key = (p * (self.D + 1) + depth) * self.W + b
            extra = self.tok(beam.text, add_special_tokens=False)["input_ids"] if beam.text else []
            requests.append(engine.Request(key, [*self.prompts[p], *extra], range(self.E)))
            where[key] = i
        out: list[list[Beam | None]] = [[None] * self.E for _ in todo]
        for s in engine.sample(self.net, requests, max_new_tokens=self.step_tokens,
                               sampling=self.sampling, eos_ids=self.settings["eos_ids"],
                               batch_size=self.settings["batch_size"], seed=self.seed,
                               mesh=self.settings["mesh"], stop_fn=self._stop, check_every=8,
                               prompt_slots_min=self.slots):
            i = where[s.problem]
            out[i][s.sample] = self._grow(todo[i][3], s.tokens)
            self.new_tokens += len(s.tokens)
        self.seconds += time.perf_counter() - t0
        return out


class PrmScorer:
    """`score` for `beam_search`: a reward run's probabilities at a text's step ends (as
    `cotjax rerank` reads them), aggregated into one score; a blank text scores 0. Each
    parent chain is read once and its candidates run only their new tokens after it
    (`rerank.score_extensions`); `full` reads whole texts (`rerank.score_texts`)."""

    def __init__(self, prm_run: str, step, questions: Sequence[str], task: str, how: str):
        prm.aggregate([1.0], how)  # a bad aggregate fails before the model loads
        self.model, self.tok, self.config, self.desc = rerank.load_reward_model(prm_run, step, "prm")
        self.questions, self.task, self.how = questions, task, how
        self.seconds = 0.0

    def _example(self, p: int, text: str):
        ends = prm.score_ends(text, self.task, self.config.data.get("labels_split", "lines"),
                              where=f"problem {p}")
        return tokenize.reward_example(self.questions[p], text, ends, [None] * len(ends),
                                       self.tok, self.config.data.template)

    def _tokens(self, p: int, text: str) -> np.ndarray:
        if not text.strip():
            return np.asarray(tokenize.reward_prompt(self.questions[p], self.tok,
                                                     self.config.data.template), np.int32)
        return self._example(p, text)[0].tokens

    def __call__(self, items):
        t0 = time.perf_counter()
        parents: dict[tuple[int, str], int] = {}
        texts: dict[tuple[int, str], int] = {}  # a text drawn twice is scored once
        children, reads = [], []
        for p, text, parent in items:
            if text.strip() and (p, text) not in texts:
                texts[p, text] = len(children)
                ex, pos = self._example(p, text)
                children.append((parents.setdefault((p, parent), len(parents)), ex.tokens))
                reads.append(pos)
        parent_tokens = [self._tokens(p, text) for p, text in parents]
        got = rerank.score_extensions(self.model, parent_tokens, children, reads)
        self.seconds += time.perf_counter() - t0
        return self._aggregate([got[texts[p, text]] if (p, text) in texts else None
                                for p, text, _ in items])

    def full(self, items):
        """The scores of (problem, text) items, each text read whole."""
        return self._aggregate(rerank.score_texts(self.model, self.tok, self.config, [
            (self.questions[p], text, f"problem {p}") for p, text in items], self.task))

    def _aggregate(self, got):
        return [0.0 if s is None else prm.aggregate([float(v) for v in s], self.how) for s in got]


def run_search(config, workdir: str | None, step=None, *, model: str | None = None,
               prm_run: str, prm_step=None, data: str | None = None, out: str,
               aggregate: str = "min", task: str | None = None) -> dict:
    """Beam search over `data`'s problems with the policy (`workdir` at `step`, else `model`)
    and the PRM `prm_run`; writes OUT/predictions.jsonl and OUT/summary.json."""
    config = evaluate.resolve_config(config, workdir, model)
    ev = evaluate._eval_settings(config)
    task = task or ev["task"]
    check_task(task)
    width, expand_k = int(ev["beam_width"]), int(ev["beam_expand"])
    max_steps, step_tokens = int(ev["beam_steps"]), int(ev["beam_step_tokens"])
    distinct = bool(ev["beam_distinct"])
    rerank.check_reward_run(prm_run, "prm")  # a policy given as --prm fails before loading
    recs, data_desc = evaluate.load_eval_records(data, task, config)
    if ev["max_examples"] >= 0:
        recs = recs[:ev["max_examples"]]
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    net, model_cfg, tokenizer, source = load.load_for_eval(config, workdir, step)
    scorer = PrmScorer(prm_run, prm_step, [r.question for r in recs], task, aggregate)
    _, ids = evaluate.eval_prompts(config, recs, tokenizer, evaluate.eval_exemplars(config))
    settings = evaluate.decode_settings(config, model_cfg, tokenizer, mesh)
    sampling = decode.SamplingConfig(float(ev["temperature"]), int(ev["top_k"]),
                                     float(ev["top_p"]))
    expander = EngineExpander(net, tokenizer, ids, settings, sampling, int(ev["seed"]),
                              width=width, expand_k=expand_k, max_steps=max_steps,
                              step_tokens=step_tokens)
    print(f"beam search: {source} with PRM {scorer.desc}, {len(recs)} problems ({data_desc}), "
          f"width {width}, {expand_k} expansions, at most {max_steps} steps", flush=True)
    t0 = time.perf_counter()
    final = beam_search(len(recs), expander, scorer, width=width, expand_k=expand_k,
                        max_steps=max_steps, distinct=distinct)
    seconds = time.perf_counter() - t0
    rows = []
    for rec, prompt, beam in zip(recs, ids, final, strict=True):
        pick = choose(beam, rec.answer, task)
        b = pick["best"]
        rows.append({"id": rec.id, "question": rec.question, "prompt_tokens": len(prompt),
                     "generation": b.text, "finish": b.finish, "new_tokens": b.new_tokens,
                     "prm_score": round(b.score, 5), **pick["scores"],
                     "weighted_answer": pick["weighted"],
                     "weighted_correct": pick["weighted_correct"],
                     "beam": [{"text": x.text, "score": round(x.score, 5), "finish": x.finish}
                              for x in beam]})
    summary = summarize(rows, task)
    summary.update({
        "weighted_accuracy": sum(r["weighted_correct"] for r in rows) / len(rows),
        "model": source, "prm": scorer.desc, "aggregate": aggregate, "data": data_desc,
        "template": config.data.template, "beam_width": width, "beam_expand": expand_k,
        "beam_steps": max_steps, "beam_step_tokens": step_tokens, "beam_distinct": distinct,
        "temperature": float(ev["temperature"]), "seed": int(ev["seed"]),
        "drawn_tokens": expander.new_tokens, "search_seconds": round(seconds, 2),
        "expand_seconds": round(expander.seconds, 2), "score_seconds": round(scorer.seconds, 2)})
    paths.path(out).mkdir(parents=True, exist_ok=True)
    paths.write_text(paths.path(out) / "predictions.jsonl",
                     "".join(json.dumps(r) + "\n" for r in rows))
    paths.write_text(paths.path(out) / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("n", "accuracy", "weighted_accuracy", "drawn_tokens",
                                              "search_seconds", "expand_seconds",
                                              "score_seconds")}), flush=True)
    return summary
