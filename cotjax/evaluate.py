"""`cotjax eval`: decode a checkpoint (or a base model) on a question file and score it.

prompts (cotjax.formatting) -> greedy and sampled completions (cotjax.decode) -> answers, votes
and step checks (cotjax.scoring, cotjax.steps) -> predictions.jsonl and summary.json
(cotjax.report). The model comes from cotjax.load.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import jax
from tqdm import tqdm

from cotjax import calculator, decode, defaults, engine, faithfulness, formatting, load, pipeline
from cotjax import prm, rerank, sharding
from cotjax import tokenize
from cotjax import records as records_lib
from cotjax.checkpoint import read_run_config
from cotjax.report import format_table, write_report
from cotjax.scoring import (check_task, normalise_gold, score_prediction, score_samples,
                            summarize)

PROMPTING = ("finetuned", "zero_shot_cot", "few_shot_cot")


def _eval_settings(config) -> dict:
    """config.eval with the base defaults filled in (configs written before the section)."""
    base = defaults.get_config().eval.to_dict()
    given = config.get("eval")
    return {**base, **(given.to_dict() if given is not None else {})}


def resolve_config(config, workdir: str | None, model: str | None):
    """The config a command runs with: the given one, else the run's own (with --workdir), else
    the defaults; references resolved and `model` (when given) as config.model. A run's model
    writes chains as its training data had them, so with --workdir `data.strip_calculator`
    (where the calculator may fire, see decode_settings) is the run's, whatever the given
    config says (printed when they differ)."""
    if config is None:
        config = read_run_config(workdir)[0] if workdir else defaults.get_config()
    elif workdir and not model:
        config = _with_run_calculator_format(config, workdir)
    if hasattr(config, "copy_and_resolve_references"):
        config = config.copy_and_resolve_references()
    if model:
        with config.unlocked():
            config.model = model
    return config


def _with_run_calculator_format(config, workdir):
    """`config` with the run's `data.strip_calculator` (the annotations its model writes)."""
    run = read_run_config(workdir)[0].data.get("strip_calculator", True)
    given = config.data.get("strip_calculator", True)
    if run == given:
        return config
    print(f"data.strip_calculator={str(run).lower()} as {workdir} was trained (the given config "
          f"said {str(given).lower()}): its chains {'drop' if run else 'keep'} GSM8K's "
          "<<a*b=c>> annotations", flush=True)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.strip_calculator = bool(run)
    return config


def load_eval_records(data: str | None, task: str, config) -> tuple[list, str]:
    """(records, description): a raw GSM8K / AQuA-RAT JSONL file, or `validation` / `train` (the
    config's held-out slice of its data or the rest of it; the source must be the task's format)."""
    if data in (None, "", "validation", "train"):
        split = data or "validation"
        recs, _ = records_lib.load_records(config.data, split)
        return recs, f"{split} split of {config.data.get('path', config.data.source)}"
    if task == "gsm8k":
        def parse(raw, where):
            return records_lib.parse_gsm8k(raw, where,
                                           strip_calc=config.data.get("strip_calculator", True))
    else:
        parse = records_lib.parse_aqua
    recs, report = records_lib.parse_all(records_lib.read_json_lines(data, bad_lines="yield"), parse,
                                         config.data.get("on_bad_record", "error"))
    if report.skipped:
        print(f"{data}: skipped {report.skipped} bad records of {report.read}: "
              f"{'; '.join(report.skip_reasons)}")
    if not recs:
        raise ValueError(f"{data}: no records")
    return recs, data


def build_prompt(record, prompting: str, template: str, tokenizer=None, exemplars=(),
                 cot_cue: str = "Let's think step by step.") -> str:
    """The prompt text of one question under a prompting mode (see PROMPTING)."""
    if prompting not in PROMPTING:
        raise ValueError(f"eval.prompting must be one of {PROMPTING}, got {prompting!r}")
    if prompting == "few_shot_cot":
        return formatting.format_prompt(record, template, tokenizer, fewshot=exemplars)
    prompt = formatting.format_prompt(record, template, tokenizer)
    if prompting == "zero_shot_cot":
        prompt += (" " if template == "plain" else "") + cot_cue
    return prompt


def prompt_ids(tokenizer, prompt: str, template: str) -> list[int]:
    """Token ids of a prompt exactly as training tokenizes it (BOS for plain, none for chat)."""
    bos = () if template == "chat" else tokenize.bos_ids(tokenizer)
    return list(bos) + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def eval_exemplars(config) -> tuple:
    """The few-shot exemplars of the config's eval prompting (none unless few_shot_cot)."""
    ev = _eval_settings(config)
    if ev["prompting"] != "few_shot_cot":
        return ()
    shots = config.copy_and_resolve_references()
    with shots.unlocked():
        shots.data.fewshot = int(ev["fewshot"])
    return pipeline.fewshot_exemplars(shots)


def eval_prompts(config, recs, tokenizer, exemplars=()) -> tuple[list[str], list[list[int]]]:
    """(prompt texts, prompt ids) of records under the config's eval prompting and template."""
    ev = _eval_settings(config)
    template = config.data.template
    prompts = [build_prompt(r, ev["prompting"], template, tokenizer, exemplars, ev["cot_cue"])
               for r in recs]
    return prompts, [prompt_ids(tokenizer, p, template) for p in prompts]


def decode_settings(config, model_cfg, tokenizer, mesh=None) -> dict:
    """generate_text keywords of the config's eval section: length, stop strings, batch, and
    EOS ids (the model's and the template's end-of-turn, so chat answers stop at their turn);
    and where the calculator may fire: a run trained with GSM8K's annotations kept
    (`data.strip_calculator=false`) writes `20 - 13 = <<20-13=7>>7`, so only inside `<<...=`."""
    ev = _eval_settings(config)
    eos = tokenize.eos_ids(tokenizer, config.data.template)
    return dict(max_new_tokens=int(ev["max_new_tokens"]), stop=tuple(ev["stop"]),
                eos_ids=tuple(dict.fromkeys([*model_cfg.eos_token_ids, *eos])),
                batch_size=int(ev["batch_size"]), mesh=mesh,
                annotations_only=not config.data.get("strip_calculator", True))


def answer_row(rec, ids: Sequence[int], completion, task: str) -> dict:
    """One predictions.jsonl row: the record, its greedy completion, and the scores."""
    return {"id": rec.id, "question": rec.question, "prompt_tokens": len(ids),
            "generation": completion.text, "finish": completion.finish,
            "new_tokens": len(completion.tokens),
            **score_prediction(completion.text, rec.answer, task)}


def stream(net, tokenizer, requests, settings: dict, *, sampling=decode.GREEDY, seed: int = 0,
           use_calculator: bool = False, stats=None):
    """(engine Sample, Completion, calculator calls) of every requested (problem, sample), as
    they finish: the engine with eval's EOS ids, stop strings and batch (`decode_settings`),
    and the calculator hook when asked for; `stats`: engine.sample's host account."""
    texts = decode.TextRule(tokenizer, settings["eos_ids"], settings["stop"])
    hook = (calculator.Hook(tokenizer, texts.text,
                            annotations_only=settings.get("annotations_only", False))
            if use_calculator else None)
    classes = calculator.token_classes(tokenizer, net.cfg.vocab_size) if hook else {}
    for s in engine.sample(net, requests, max_new_tokens=settings["max_new_tokens"],
                           sampling=sampling, eos_ids=settings["eos_ids"],
                           batch_size=settings["batch_size"], seed=seed, mesh=settings["mesh"],
                           stop_fn=texts.stop_fn(), hook=hook,
                           trigger_ids=classes.get("trigger", ()), number_ids=classes,
                           stats=stats):
        completion = texts.complete(s.tokens)
        yield s, completion, (_kept_calls(hook.describe(s), s.tokens, completion, texts)
                              if hook else None)


def _kept_calls(calls, tokens, completion, texts) -> list[dict]:
    """The calculator calls inside the text kept: a row cut at a stop string may have run on
    (the engine looks for stop strings every few tokens) and called it past the cut."""
    if completion.finish != "stop":
        return calls
    return [c for c in calls if len(texts.text(tokens[:c["at_token"]])) < len(completion.text)]


def complete_all(net, tokenizer, ids, settings: dict, *, k: int = 1, progress=None,
                 **kw) -> list[list[tuple]]:
    """`stream` over every prompt, k samples each, collected in prompt and sample order."""
    out = [[None] * k for _ in ids]
    requests = [engine.Request(i, p, range(k)) for i, p in enumerate(ids)]
    for s, completion, calls in stream(net, tokenizer, requests, settings, **kw):
        out[s.problem][s.sample] = (completion, calls)
        if progress is not None:
            progress(1)
    return out


def calculator_fields(calls) -> dict:
    if calls is None:
        return {}
    return {"calculator_calls": calls, "calculator_changed": sum(c["changed"] for c in calls)}


def faithfulness_settings(ev: dict) -> tuple[str, ...]:
    """eval.faithfulness as intervention names: a tuple, "a,b", or "all"; () when off."""
    given = ev.get("faithfulness") or ()
    names = [n.strip() for item in ([given] if isinstance(given, str) else given)
             for n in str(item).split(",") if n.strip()]
    if "all" in names:
        return faithfulness.INTERVENTIONS
    unknown = sorted(set(names) - set(faithfulness.INTERVENTIONS))
    if unknown:
        raise ValueError(f"eval.faithfulness: unknown intervention(s) {unknown}; choose from "
                         f"{', '.join(faithfulness.INTERVENTIONS)} or all")
    return tuple(dict.fromkeys(names))


def intervene(net, tokenizer, ids, rows, settings: dict, *, task: str, template: str,
              interventions, points: int = 11, answer_tokens: int = 16,
              progress=None) -> tuple[list[dict], dict]:
    """The faithfulness interventions on greedy `rows` (answer_row dicts) whose prompts were
    `ids`: each query is decoded greedily by the engine from the prompt ids followed by the
    query's text as tokens; answers after the cue stop at the line's end."""
    def encode(text):
        return decode.encode_prompt(tokenizer, text, add_special_tokens=False)

    def complete(queries):
        texts = [""] * len(queries)
        for kind, budget, stops in (("answer", answer_tokens, ("\n",)),
                                    ("continue", settings["max_new_tokens"], ())):
            mine = [j for j, q in enumerate(queries) if q.kind == kind]
            if not mine:
                continue
            prompts = [list(ids[queries[j].problem]) + encode(queries[j].prefix) for j in mine]
            done = complete_all(net, tokenizer, prompts,
                                {**settings, "max_new_tokens": int(budget),
                                 "stop": (*settings["stop"], *stops)}, progress=progress)
            for j, [(completion, _)] in zip(mine, done, strict=True):
                texts[j] = completion.text
        return texts

    frows, summary = faithfulness.run(
        [r["generation"] for r in rows], [r["gold"] for r in rows], complete, task=task,
        lead=" " if template == "plain" else "", interventions=interventions, points=points,
        num_tokens=lambda text: len(encode(text)))
    applicable = [r for r, f in zip(rows, frows) if f["applicable"]]
    summary["faithfulness_answer_differs"] = (  # eval's own field is a count over all rows
        round(sum(r["answer_differs_from_last_step"] for r in applicable) / len(applicable), 4)
        if applicable else None)
    return frows, summary


def greedy_answers(net, model_cfg, tokenizer, config, recs, *, task: str | None = None,
                   max_new_tokens: int | None = None, mesh=None) -> list[dict]:
    """Records answered greedily and scored exactly as `cotjax eval` does (its prompting,
    template, stops and EOS): one `answer_row` per record."""
    task = task or _eval_settings(config)["task"]
    _, ids = eval_prompts(config, recs, tokenizer, eval_exemplars(config))
    settings = decode_settings(config, model_cfg, tokenizer, mesh)
    if max_new_tokens is not None:
        settings["max_new_tokens"] = int(max_new_tokens)
    done = complete_all(net, tokenizer, ids, settings,
                        use_calculator=bool(_eval_settings(config)["calculator"]))
    return [{**answer_row(r, i, c, task), **calculator_fields(calls)}
            for r, i, [(c, calls)] in zip(recs, ids, done, strict=True)]


def compare_answers(workdir, n: int = 4, models=(("base", "base"), ("fine-tuned", None)), *,
                    data: str | None = None, max_new_tokens: int | None = None,
                    mesh=None) -> list[dict]:
    """The first `n` eval questions of a run (default: its validation slice) answered by several
    of its models, side by side: one dict per question with `id`, `question`, `gold` and
    `answers` {label: answer_row}. `models` pairs a label with a step of `load.load_run_model`
    ("base": the model the run started from; None: the latest checkpoint); `mesh`: where the
    models are placed and decoded (default: one device)."""
    config, _ = read_run_config(workdir)
    task = _eval_settings(config)["task"]
    recs, _ = load_eval_records(data, task, config)
    recs = recs[:n]
    out = [{"id": r.id, "question": r.question, "gold": normalise_gold(r.answer, task),
            "answers": {}} for r in recs]
    for label, step in models:
        net, model_cfg, tokenizer, _ = load.load_run_model(workdir, step, mesh=mesh)
        net, model_cfg = load.merge_adapters(net, mesh)
        rows = greedy_answers(net, model_cfg, tokenizer, config, recs, task=task,
                              max_new_tokens=max_new_tokens, mesh=mesh)
        for question, row in zip(out, rows):
            question["answers"][label] = row
        del net  # one model in memory at a time
    return out


def run_eval(config, workdir: str | None = None, step=None, *, task: str | None = None,
             data: str | None = None, out: str | None = None, model: str | None = None,
             progress: bool = True) -> dict:
    """Decode and score; writes predictions.jsonl and summary.json into `out`; returns summary.

    Model: the checkpoint in `workdir` (`step`: None/'latest', a number, or 'base'), else the
    config's base model (`model` overrides config.model). When the run's workdir is given and no
    config, the run's own config is used. `data`: a JSONL file in raw GSM8K or AQuA-RAT format,
    or 'validation' (default) for the config's held-out slice.
    """

    step = load.parse_step(step)
    config = resolve_config(config, workdir, model)
    ev = _eval_settings(config)
    task = task or ev["task"]
    check_task(task)
    interventions = faithfulness_settings(ev)  # a bad name fails before the model loads
    if ev["prm"] or ev["orm"]:
        prm.aggregate([1.0], ev["prm_aggregate"])
        if int(ev["num_samples"]) < 2:
            raise ValueError("eval.prm / eval.orm rerank sampled chains: set "
                             "eval.num_samples >= 2")
        for objective in ("prm", "orm"):  # the wrong kind of run fails before decoding
            if ev[objective]:
                rerank.check_reward_run(ev[objective], objective, f"eval.{objective}")
    prompting, template = ev["prompting"], config.data.template
    if out is None:
        if not workdir:
            raise ValueError("cotjax eval needs --out=DIR (or --workdir, to write under it)")
        out = os.path.join(workdir, "eval", f"step_{step if step is not None else 'latest'}")

    mesh = sharding.optional_mesh(config.mesh)
    net, model_cfg, tokenizer, source = load.load_for_eval(config, workdir, step, mesh)
    recs, data_desc = load_eval_records(data, task, config)
    if ev["max_examples"] >= 0:
        recs = recs[:ev["max_examples"]]
    # Say which model answers before minutes of decoding (a base model when no --workdir).
    print(f"evaluating {source} on {len(recs)} {task} questions ({data_desc}); prompting "
          f"{prompting}, template {template}", flush=True)
    exemplars = eval_exemplars(config)
    _, ids = eval_prompts(config, recs, tokenizer, exemplars)
    common = decode_settings(config, model_cfg, tokenizer, mesh)
    use_calc = bool(ev["calculator"])

    def decode_all(desc, k, **kw):
        with tqdm(total=len(ids) * k, desc=desc, unit="seq", disable=not progress) as bar:
            t0 = time.perf_counter()
            outs = complete_all(net, tokenizer, ids, common, k=k, progress=bar.update,
                                use_calculator=use_calc, **kw)
            return outs, time.perf_counter() - t0

    greedy, seconds = decode_all("greedy", 1)
    rows = [{**answer_row(r, i, c, task), **calculator_fields(calls)}
            for r, i, [(c, calls)] in zip(recs, ids, greedy, strict=True)]
    faith_summary, faith_seconds = {}, 0.0
    if interventions:
        t0 = time.perf_counter()
        with tqdm(desc="faithfulness", unit="seq", disable=not progress) as bar:
            frows, faith_summary = intervene(
                net, tokenizer, ids, rows, common, task=task, template=template,
                interventions=interventions, points=int(ev["faithfulness_points"]),
                answer_tokens=int(ev["faithfulness_answer_tokens"]), progress=bar.update)
        faith_seconds = time.perf_counter() - t0
        for row, f in zip(rows, frows, strict=True):
            row["faithfulness"] = f
    n_samples = int(ev["num_samples"])
    sample_seconds = 0.0
    if n_samples > 1:
        sampling = decode.SamplingConfig(float(ev["temperature"]), int(ev["top_k"]),
                                         float(ev["top_p"]))
        chains, sample_seconds = decode_all(f"sampled x{n_samples}", n_samples,
                                            sampling=sampling, seed=int(ev["seed"]))
        for row, mine in zip(rows, chains, strict=True):
            # strict and flexible answers of every sample, and both votes: each selector is
            # scored by the same rule as the greedy answer it is compared with
            votes = score_samples([c.text for c, _ in mine], row["gold"], task)
            row["samples"] = [{"generation": c.text, "finish": c.finish, **scores,
                               **calculator_fields(calls)}
                              for (c, calls), scores in zip(mine, votes.pop("samples"),
                                                            strict=True)]
            row.update(votes)
    rerank_summary = rerank_samples(rows, ev, task) if n_samples > 1 else {}
    summary = summarize(rows, task)
    new_tokens = sum(r["new_tokens"] for r in rows)
    summary.update({
        "prompting": prompting, "template": template, "model": source, "data": data_desc,
        "max_new_tokens": common["max_new_tokens"],
        "finished_eos": sum(r["finish"] == "eos" for r in rows),
        "finished_stop": sum(r["finish"] == "stop" for r in rows),
        "finished_length": sum(r["finish"] == "length" for r in rows),
        "decode_seconds": round(seconds, 2),
        "greedy_tokens_per_s": round(new_tokens / seconds, 1) if seconds else 0.0,
    })
    if prompting == "few_shot_cot":
        summary["fewshot"] = len(exemplars)
    if use_calc:
        calls = [c for r in rows for c in r["calculator_calls"]]
        summary.update(calculator=True, calculator_calls=len(calls),
                       calculator_changed=sum(c["changed"] for c in calls))
    if interventions:
        summary.update({"faithfulness": list(interventions), **faith_summary,
                        "faithfulness_seconds": round(faith_seconds, 2)})
    if n_samples > 1:
        # the votes' and samples' accuracies come from summarize, under both rules
        summary.update({"maj_n": n_samples, "temperature": float(ev["temperature"]),
                        "sample_decode_seconds": round(sample_seconds, 2)})
    if rerank_summary:
        summary["rerank"] = rerank_summary
    if jax.process_index() == 0:  # every process decoded the same rows: one writes them
        write_report(out, rows, summary)
    print(format_table(summary))
    print(f"wrote {os.path.join(out, 'predictions.jsonl')} and {os.path.join(out, 'summary.json')}")
    return summary


def rerank_samples(rows: list[dict], ev: dict, task: str) -> dict:
    """With eval.prm / eval.orm: the eval's own samples scored by those reward models and every
    selector on them (cotjax.rerank); each row gets its `selected` answers."""
    if not (ev.get("prm") or ev.get("orm")):
        return {}
    samples = [{"problem": i, "sample": j, "question": r["question"], "gold": r["gold"],
                "generation": s["generation"], "extracted": s["extracted"],
                "correct": s["correct"]}
               for i, r in enumerate(rows) for j, s in enumerate(r["samples"])]
    groups = rerank.by_problem(samples)
    scores, desc, seconds = rerank.score_all(samples, ev.get("prm") or None,
                                             ev.get("orm") or None, task=task)
    result, final = rerank.select_all(groups, scores, ev.get("prm_aggregate", "min"), task)
    for i, row in enumerate(rows):
        row["selected"] = final[i]
        for j, sample in enumerate(row["samples"]):
            sample.update({k: s[(i, j)] for k, s in scores.items()})
    return {**result, "prm": desc.get("prm"), "orm": desc.get("orm"),
            "score_seconds": {k: round(v, 1) for k, v in seconds.items()}}


def main(flags) -> None:
    """`cotjax eval [--config=PATH] [--workdir=DIR [--step=latest|N|base]] [--model=SPEC]
    [--task=gsm8k|aqua] [--data=FILE|validation] --out=DIR`."""
    run_eval(flags.config, flags.workdir, flags.step, task=flags.task, data=flags.data,
             out=flags.out, model=flags.model)



def generate_one(prompt: str, *, workdir: str | None = None, step=None, model: str | None = None,
                 config=None, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> str:
    """`cotjax generate`: with `workdir`, the run's checkpoint answers `prompt` as a question
    through the run's template and eval prompting (as `cotjax eval` asks it); otherwise `model`
    (or the config's) continues the raw prompt text."""
    sampling = decode.SamplingConfig(float(temperature), int(top_k), float(top_p))
    if workdir:
        net, model_cfg, tokenizer, run_config = load.load_run_model(workdir, step)
        net, model_cfg = load.merge_adapters(net)
        config = config if config is not None else run_config
        record = records_lib.CoTRecord(question=prompt, chain="", answer="")
        _, [ids] = eval_prompts(config, [record], tokenizer)
        settings = decode_settings(config, model_cfg, tokenizer)
        settings.update(max_new_tokens=int(max_new_tokens), batch_size=1)
        [[(completion, _)]] = complete_all(
            net, tokenizer, [ids], settings, sampling=sampling, seed=seed,
            use_calculator=bool(_eval_settings(config)["calculator"]))
        return completion.text
    if config is None:
        config = defaults.get_config()
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model = model or config.model
    net, model_cfg = load.load_base_model(config)
    tokenizer = load.load_tokenizer(config)
    settings = dict(max_new_tokens=int(max_new_tokens), stop=(), batch_size=1, mesh=None,
                    eos_ids=tuple(model_cfg.eos_token_ids))
    [[(completion, _)]] = complete_all(
        net, tokenizer, [decode.encode_prompt(tokenizer, prompt)], settings, sampling=sampling,
        seed=seed, use_calculator=bool(_eval_settings(config)["calculator"]))
    return completion.text
