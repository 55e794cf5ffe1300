"""The `cotjax` console script: `cotjax SUBCOMMAND [--flag=value ...]`.

Each subcommand declares its own flags (so `cotjax train --help` lists train's flags and exits 0)
and runs the stage module that does the work; this file parses, dispatches, and turns user errors
into one line on stderr with a non-zero exit. `COTJAX_DEBUG=1` shows the traceback instead.
Configs are ml_collections files: `--config=PATH[:ARG]` plus `--config.a.b=value` overrides.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
from collections.abc import Callable

from absl import flags as absl_flags

# Flags shared by several subcommands: name -> (kind, default, help).
FLAG_SPECS = {
    "workdir": ("string", None, "run directory (checkpoints, metrics); local path or URL (gs://...)"),
    "model": ("string", None, "model spec: preset, .gguf file, HF directory or hub id"),
    "step": ("string", None, "checkpoint step: latest (default), a number, or 'base'"),
    "out": ("string", None, "output directory (distill: the output JSONL file)"),
    "task": ("string", None, "gsm8k | aqua (default: the config's eval.task)"),
    "data": ("string", None, "questions: a JSONL file in raw GSM8K / AQuA-RAT format, "
                             "'validation' (the config's held-out slice; default) or 'train' "
                             "(the rest of the config's data)"),
    "k": ("integer", 4, "samples per problem"),
    "hint": ("bool", False, "STaR rationalisation: the gold answer as a hint in the prompt "
                            "(the written lines keep the question without it)"),
    "prompt": ("string", None, "the prompt: raw text with --model, a question with --workdir"),
    "max_new_tokens": ("integer", 256, "tokens to generate at most"),
    "temperature": ("float", 0.0, "0: greedy; > 0: sampled"),
    "top_k": ("integer", 0, "sampling: keep the k most likely tokens (0: off)"),
    "top_p": ("float", 1.0, "sampling: nucleus mass (1.0: off)"),
    "seed": ("integer", 0, "sampling seed"),
    "overwrite": ("bool", False, "replace a non-empty output directory"),
    "adapter": ("bool", False, "export: a LoRA run's adapters alone, as a PEFT adapter "
                               "directory (default: the model with adapters merged)"),
    "filters": ("string", "correct,steps_valid,consistent,finished",
                "distill: the filters a sample must pass, comma-separated, or 'none'"),
    "max_per_problem": ("integer", 4, "distill: distinct reasoning paths kept per problem"),
    "first_samples": ("integer", -1, "distill: each problem's samples 0..N-1 only (-1: all): "
                                     "what a smaller K would have kept, from one run"),
    "samples": ("string", None, "label-steps, rerank: a sample directory (cotjax sample "
                                "--out=DIR); rerank also a cotjax eval predictions file with "
                                "maj@N samples"),
    "rollouts": ("integer", 8, "label-steps: completions sampled from each step prefix"),
    "split": ("string", "lines", "label-steps: how a chain splits into steps (lines | sentences)"),
    "max_chains": ("integer", -1, "label-steps: label the first M chains only (-1: all)"),
    "prm": ("string", None, "rerank, search: a process reward model run "
                           "(train.objective=prm)"),
    "orm": ("string", None, "rerank: an outcome reward model run (train.objective=orm)"),
    "aggregate": ("string", "min", "rerank, search: a chain's PRM score from its steps' (min | prod | "
                                   "last | step_min)"),
    "max_problems": ("integer", -1, "rerank, distill: the first P problems only (-1: all)"),
    "headroom": ("string", None, "rerank: within-problem AUROCs, comma-separated, of simulated "
                                 "verifiers to choose among the samples of an earlier rerank "
                                 "(--samples=its OUT): OUT/headroom.json; no model loads"),
    "combine": ("string", None, "rerank: earlier rerank OUT directories of the same samples, "
                                "comma-separated, as one comparison (each selector from the "
                                "first that has it; no model loads)"),
    "human": ("string", None, "distill: add the human chains of 'train' (the config's split) or "
                              "of a raw GSM8K file"),
    "control": ("bool", False, "distill: also OUT.control.jsonl, the count-matched control: each "
                               "kept chain replaced by its problem's human chain (needs --human)"),
}


@dataclasses.dataclass(frozen=True)
class Command:
    help: str
    run: Callable  # (flag values, positional args) -> None
    flags: tuple[str, ...] = ()
    config: str = ""  # "", "optional" or "required"
    usage: str = ""  # positional arguments, for commands that take them


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


def _need(fv, *names):
    missing = [f"--{n}" for n in names if getattr(fv, n) in (None, "")]
    if missing:
        raise UsageError(f"needs {' and '.join(missing)}")


def _refuse(fv, why: str, *names):
    """A usage error naming the flags (set to other than their defaults) that `why` ignores."""
    given = [f"--{n}" for n in names if getattr(fv, n) not in (None, "", FLAG_SPECS[n][1])]
    if given:
        raise UsageError(f"{why}; drop {', '.join(given)}")


# ----------------------------------------------------------------------------------------------
# The subcommands: thin glue over the stage modules (imported when run, so --help stays fast).


def _train(fv, args):
    _need(fv, "config", "workdir")
    from cotjax import sharding

    sharding.maybe_initialize_distributed()
    from cotjax import defaults, train

    result = train.main(fv)
    spec = defaults.TrainSpec.from_config(fv.config)
    if spec.eval_at_end and spec.objective != "cot":
        print(f"train.eval_at_end: skipped (a {spec.objective} reward model does not decode; "
              "score samples with it: cotjax rerank)", flush=True)
    elif not result.stopped_by_signal and spec.eval_at_end:
        # The end-of-training evaluation runs here, after `train` returned: train never
        # imports evaluation.
        import jax

        from cotjax import evaluate

        summary = evaluate.run_eval(config=fv.config, workdir=fv.workdir, step=result.step,
                                    out=os.path.join(fv.workdir, "eval"))
        if jax.process_index() == 0:
            print(json.dumps({"eval": summary}, default=str), flush=True)


def _eval(fv, args):
    from cotjax import evaluate

    if not fv.out and not fv.workdir:
        raise UsageError("needs --out=DIR (or --workdir, to write under it)")
    if not fv.workdir and not fv.model and fv.config is None:
        raise UsageError("needs --workdir=RUN (a trained run), --model=SPEC or --config=PATH "
                         "(its base model): say which model to evaluate")
    evaluate.run_eval(_run_config(fv), fv.workdir, fv.step, task=fv.task, data=fv.data, out=fv.out,
                      model=fv.model)


def _run_config(fv):
    """The config a command runs with: --config's, or, with --workdir and no --config, the
    run's own config with the --config.KEY=VALUE overrides given (None: the run's as saved)."""
    if fv.config is not None or not fv.run_overrides:
        return fv.config
    if not fv.workdir:
        raise UsageError("--config.KEY=VALUE overrides need --config=PATH or --workdir=RUN")
    from cotjax import checkpoint, defaults

    config, _ = checkpoint.read_run_config(fv.workdir)
    defaults.apply_overrides(config, fv.run_overrides, where=f"the config of {fv.workdir}")
    return config


def _sample(fv, args):
    _need(fv, "out")
    from cotjax import sample

    if fv.workdir and fv.model:
        raise UsageError("takes --workdir (a trained run) or --model (a raw model), not both")
    if not fv.workdir and not fv.model and fv.config is None:
        raise UsageError("needs --workdir=RUN, --model=SPEC or --config=PATH: say which model "
                         "samples")
    sample.run_sample(_run_config(fv), fv.workdir, fv.step, model=fv.model, data=fv.data,
                      k=fv.k, out=fv.out, overwrite=fv.overwrite, hint=fv.hint, task=fv.task)


def _label_steps(fv, args):
    _need(fv, "samples", "out")
    from cotjax import label_steps

    if fv.workdir and fv.model:
        raise UsageError("takes --workdir (a trained run) or --model (a raw model), not both")
    if not fv.workdir and not fv.model and fv.config is None:
        raise UsageError("needs --workdir=RUN, --model=SPEC or --config=PATH: say which model "
                         "completes the step prefixes")
    label_steps.run_label_steps(_run_config(fv), fv.workdir, fv.step, model=fv.model,
                                samples=fv.samples, rollouts=fv.rollouts, out=fv.out,
                                split=fv.split, max_chains=fv.max_chains,
                                overwrite=fv.overwrite)


def _search(fv, args):
    _need(fv, "prm", "out")
    from cotjax import search

    if fv.workdir and fv.model:
        raise UsageError("takes --workdir (a trained run) or --model (a raw model), not both")
    search.run_search(_run_config(fv), fv.workdir, fv.step, model=fv.model, prm_run=fv.prm,
                      data=fv.data, out=fv.out, aggregate=fv.aggregate, task=fv.task)


def _rerank(fv, args):
    from cotjax import prm, rerank

    if fv.headroom:
        _need(fv, "samples", "out")
        _refuse(fv, "--headroom simulates the verifier", "prm", "orm", "combine", "step",
                "aggregate", "max_problems")
        try:
            aurocs = [float(a) for a in fv.headroom.split(",")]
        except ValueError:
            raise UsageError(f"--headroom={fv.headroom}: give AUROCs like 0.6,0.7,0.8") from None
        from cotjax import headroom

        result = headroom.write_headroom(fv.samples, aurocs, fv.out)
        print(json.dumps({"majority": result["majority"], **{
            a: v["prm_weighted"]["mean"] for a, v in result["by_auroc"].items()}}), flush=True)
        return
    if fv.combine:
        _need(fv, "out")
        _refuse(fv, "--combine reads earlier reranks' scores (each with its own aggregate)",
                "samples", "prm", "orm", "step", "aggregate", "max_problems")
        result = rerank.write_combined(fv.combine.split(","), fv.out)
        print(json.dumps({s: result[s] for s in result["source"]} | {
            "mcnemar_p": result.get("mcnemar_p")}), flush=True)
        return
    _need(fv, "samples", "out")
    result = rerank.run_rerank([fv.samples], fv.out, prm_run=fv.prm, orm_run=fv.orm,
                               step=fv.step, aggregate=fv.aggregate,
                               max_problems=fv.max_problems)
    print(json.dumps({"problems": result["problems"], "n": result["samples_per_problem"],
                      **{k: result[k]["accuracy"] for k in prm.SELECTORS if k in result},
                      "mcnemar_p": result.get("mcnemar_p")}), flush=True)


def _distill(fv, args):
    _need(fv, "out")
    from cotjax import distill

    if not args:
        raise UsageError("needs one or more sample directories (cotjax sample --out=DIR)")
    distill.main(fv, args)


def _generate(fv, args):
    _need(fv, "prompt")
    from cotjax import evaluate

    if fv.workdir and fv.model:
        raise UsageError("takes --workdir (a trained run) or --model (a raw model), not both")
    text = evaluate.generate_one(fv.prompt, workdir=fv.workdir, step=fv.step, model=fv.model,
                                 config=_run_config(fv), max_new_tokens=fv.max_new_tokens,
                                 temperature=fv.temperature, top_k=fv.top_k, top_p=fv.top_p,
                                 seed=fv.seed)
    sys.stdout.write(text + "\n")


def _export(fv, args):
    _need(fv, "workdir", "out")
    from cotjax import export

    export.main(fv.workdir, fv.out, fv.step, overwrite=fv.overwrite, adapter=fv.adapter)


def _data_stats(fv, args):
    _need(fv, "config")
    from cotjax import load, pipeline

    stats = pipeline.data_stats(fv.config, load.load_tokenizer(fv.config))
    pipeline.print_stats(fv.config, stats)
    print(json.dumps({k: stats[k] for k in (
        "examples", "truncated", "dropped", "skipped", "tokens", "rows", "packing_efficiency")}))


def _memory(fv, args):
    _need(fv, "config")
    from cotjax import memory

    est = memory.estimate(fv.config)
    print(memory.describe(est))
    print(json.dumps(est))


def _config(fv, args):
    _need(fv, "config")
    print(fv.config.to_json_best_effort(indent=2))


def _viz(fv, args):
    from cotjax import viz

    viz.main(args)


def _report(fv, args):
    from cotjax import report

    report.main(args)


def _synthetic(fv, args):
    from cotjax import synthetic

    synthetic.main(args)


COMMANDS = {
    "train": Command("CoT fine-tune a model (resumes from the workdir)", _train,
                     ("workdir",), "required"),
    "eval": Command("decode and score a checkpoint or a base model", _eval,
                    ("workdir", "step", "model", "task", "data", "out"), "optional"),
    "sample": Command("K sampled chains per problem (continuous batching), scored, resumable",
                      _sample, ("workdir", "step", "model", "task", "data", "k", "out", "hint",
                                "overwrite"), "optional"),
    "distill": Command("verified, distinct sampled chains as training records (with a funnel)",
                       _distill, ("out", "filters", "max_per_problem", "human", "control", "task",
                                  "first_samples", "max_problems"),
                       "optional", usage="SAMPLE_DIR ... --out=FILE.jsonl [--flag=value ...]"),
    "label-steps": Command("Monte Carlo step labels of sampled chains (and the checker's)",
                           _label_steps, ("workdir", "step", "model", "samples", "rollouts",
                                          "split", "max_chains", "out", "overwrite"), "optional"),
    "rerank": Command("choose among N sampled chains with a PRM / ORM (or only the step "
                      "checker): every selector, paired",
                      _rerank, ("samples", "prm", "orm", "step", "aggregate", "max_problems",
                                 "combine", "headroom", "out")),
    "search": Command("step-level beam search guided by a PRM (eval.beam_* settings)", _search,
                      ("workdir", "step", "model", "prm", "aggregate", "task", "data", "out"),
                      "optional"),
    "generate": Command("answer one prompt: a trained run through its template, or a raw model",
                        _generate, ("workdir", "step", "model", "prompt", "max_new_tokens",
                                    "temperature", "top_k", "top_p", "seed"), "optional"),
    "export": Command("write a checkpoint as a HF directory (safetensors + tokenizer), or a "
                      "LoRA run's PEFT adapter directory", _export,
                      ("workdir", "step", "out", "overwrite", "adapter")),
    "data-stats": Command("example counts, lengths, truncation and packing of a config",
                          _data_stats, (), "required"),
    "config": Command("print the resolved config (with overrides) and exit", _config, (),
                      "required"),
    "memory": Command("per-device training memory of a config: weights, gradients, Adam state "
                      "(exact), activations and logits (estimated)", _memory, (), "required"),
    "viz": Command("training curves and sweeps as PNG", _viz,
                   usage="compare OUT.png NAME=METRICS.jsonl ... | sweep DIR OUT.png"),
    "report": Command("paired tests, confidence intervals, rescoring, experiment tables",
                      _report, usage="paired A B [FIELD [FIELD_B]] | by-steps OUT_PREFIX "
                                     "LABEL=PREDICTIONS ... | errors PREDICTIONS ... | "
                                     "faithfulness OUT_PREFIX LABEL=EVAL_DIR ... | "
                                     "rescore [--check] PATH ... | check PATH ..."),
    "synthetic": Command("write generated multi-step arithmetic problems (GSM8K format)",
                         _synthetic, usage="OUT N MIN_STEPS MAX_STEPS SEED"),
}


# ----------------------------------------------------------------------------------------------
# Parsing.


def _flag_values(name: str, command: Command, argv: list[str]) -> absl_flags.FlagValues:
    from ml_collections import config_flags

    fv = absl_flags.FlagValues()
    if command.config:
        config_flags.DEFINE_config_file(
            "config", None, "ml_collections config file (get_config(arg)), PATH[:ARG]; "
            "override keys with --config.section.key=value", flag_values=fv,
            sys_argv=[f"cotjax {name}"] + argv)  # where it finds the --config.a.b overrides
    for flag in command.flags:
        kind, default, help_ = FLAG_SPECS[flag]
        getattr(absl_flags, f"DEFINE_{kind}")(flag, default, help_, flag_values=fv)
    return fv


def _usage() -> str:
    lines = ["usage: cotjax SUBCOMMAND [--flag=value ...]   (cotjax SUBCOMMAND --help: its flags)",
             "", "subcommands:"]
    lines += [f"  {name:11s} {c.help}" for name, c in COMMANDS.items()]
    return "\n".join(lines)


def _help(name: str, command: Command) -> str:
    lines = [f"usage: cotjax {name} " + (command.usage or "[--flag=value ...]"), "",
             command.help]
    if command.config:
        need = "required" if command.config == "required" else "optional"
        lines += ["", f"  --config=PATH[:ARG]  ml_collections config file (get_config(arg)); {need}",
                  "  --config.SECTION.KEY=VALUE  override one key (cotjax config prints them all)"]
    for flag in command.flags:
        kind, default, help_ = FLAG_SPECS[flag]
        shown = f"--{flag}" if kind == "bool" else f"--{flag}=..."
        lines.append(f"  {shown:20s} {help_}" + (f" (default: {default})" if default not in
                                                   (None, False) else ""))
    return "\n".join(lines)


def _suggest(word: str, choices) -> str:
    from cotjax import defaults

    return defaults.did_you_mean(word, choices)


def _parse(name: str, command: Command, argv: list[str]):
    run_overrides = {}
    if command.config == "optional" and not any(a.startswith("--config=") or a == "--config"
                                                 for a in argv):
        # `cotjax eval --workdir=RUN --config.eval.num_samples=8`: overrides of the run's own
        # config, applied once it is read (see _config).
        run_overrides = dict(a[len("--config."):].split("=", 1) for a in argv
                             if a.startswith("--config.") and "=" in a)
        argv = [a for a in argv if not (a.startswith("--config.") and "=" in a)]
    for arg in argv:  # ml_collections reports a missing file only lazily, without its name
        if arg.startswith("--config=") and not os.path.isfile(arg[len("--config="):].split(":")[0]):
            raise UsageError(f"config file {arg[len('--config='):].split(':')[0]} does not exist")
    fv = _flag_values(name, command, argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(_help(name, command))
        raise SystemExit(0)
    if not command.config and not command.flags:
        return _namespace(fv, command, {}), list(argv)  # positional commands parse their own
    try:
        rest = fv([f"cotjax {name}"] + argv)[1:]
    except absl_flags.UnrecognizedFlagError as e:
        known = [f for f in fv] if command.config or command.flags else []
        raise UsageError(f"unknown flag --{e.flagname}{_suggest(e.flagname, known)}; "
                         f"see cotjax {name} --help") from None
    except absl_flags.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        msg = lines[0] if lines else type(e).__name__
        if msg.endswith(":") and len(lines) > 1:
            # A config file's get_config raised: its traceback's last line says why.
            msg = f"{msg} {lines[-1]}"
        raise UsageError(msg) from None
    except (KeyError, AttributeError, ValueError, TypeError) as e:
        line = _config_error_line(e, argv)
        if line is None:
            raise
        raise UsageError(line) from None
    if command.config:
        try:
            config = fv["config"].value  # applies the --config.a.b overrides
        except (KeyError, AttributeError, ValueError, TypeError) as e:
            line = _config_error_line(e, argv)
            if line is None:
                raise
            raise UsageError(line) from None
        if command.config == "required" and config is None:
            raise UsageError("needs --config=PATH")
    if rest and not command.usage:
        raise UsageError(f"takes no positional arguments, got {rest[:3]}")
    return _namespace(fv, command, run_overrides), rest


def _namespace(fv, command: Command, run_overrides: dict):
    """The parsed flags as plain attributes (absl's FlagValues takes no extra ones)."""
    names = command.flags + (("config",) if command.config else ())
    return types.SimpleNamespace(run_overrides=run_overrides,
                                 **{n: fv[n].value for n in names})


def _config_error_line(e: Exception, argv: list[str]) -> str | None:
    """One line for a bad `--config.a.b=v` override (ml_collections raises deep inside): the
    key, and the closest key at the level where the path left the config."""
    from cotjax import defaults

    base = defaults.get_config()
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            key = arg[len("--config."):].partition("=")[0]
            hint = defaults.missing_key_hint(base, key)
            if hint is not None:
                return f"unknown config key {key!r}{hint}"
    return None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage(), file=sys.stdout if len(argv) >= 2 else sys.stderr)
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        print(f"cotjax: unknown subcommand {name!r}{_suggest(name, COMMANDS)}; one of: "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    command = COMMANDS[name]
    debug = os.environ.get("COTJAX_DEBUG", "") not in ("", "0")
    try:
        fv, rest = _parse(name, command, argv[2:])
        command.run(fv, rest)
    except UsageError as e:
        if debug:
            raise
        print(f"cotjax {name}: {e}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, NotADirectoryError, FileExistsError, ValueError, KeyError,
            FloatingPointError) as e:
        # Input the user gave that cannot be used (the message names the file, flag, key or
        # step), or a run stopped on purpose (non-finite loss). A bug can land here too, hence
        # the pointer to the traceback.
        if debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"cotjax {name}: {type(e).__name__}: {msg} (COTJAX_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
