"""The defaults of every config, written once, and the typed `train` section.

Config files (configs/*.py) start from `get_config()` and change a few keys:

    from cotjax import defaults

    def get_config(arg=None):
        c = defaults.get_config()
        ...

A config file may take an argument, `--config=configs/gsm8k.py:model=gemma3-270m,mode=answer_only`;
`parse_arg` reads it against the keys and defaults the file declares. Any key can be overridden on
the command line as `--config.section.key=value`. Pure Python: no JAX.
"""

from __future__ import annotations

import contextlib
import dataclasses

import ml_collections


OBJECTIVES = ("cot", "prm", "orm")  # train.objective: the CoT loss, or a reward model
REWARD_OBJECTIVES = ("prm", "orm")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """The `train` section of a config: its keys, types and defaults (the only place they are
    written; `get_config` copies them into every config)."""

    # cot (the CoT loss) | prm | orm: a process / outcome reward model on data.labels
    # (cotjax.loss; docs/process_supervision.md)
    objective: str = "cot"
    # prm: Monte Carlo labels, hard (any rollout right) | soft (the share right), or checker:
    # the arithmetic step checker's verdict (steps without a claim are read, not trained; it
    # needs no rollouts, so `cotjax sample` lines serve as well as `cotjax label-steps` ones)
    reward_labels: str = "hard"
    steps: int = -1  # optimizer steps; -1: as many as data.num_epochs gives
    lr: float = 1e-5
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant
    end_lr_fraction: float = 0.1  # final lr as a fraction of lr
    weight_decay: float = 0.0  # AdamW; never on norms and biases
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global norm; <= 0: off
    # > 0: the CoT loss makes logits this many positions at a time (must divide data.seq_len),
    # never the whole [batch, seq_len, vocab] array: for large vocabularies (Gemma's 262k)
    loss_chunk: int = 0
    # the CoT loss makes logits only at the positions with a loss (chain, answer), not at the
    # prompt and padding: faster, the same loss up to float rounding (cotjax.loss)
    target_logits_only: bool = False
    microbatches: int = 1  # gradient accumulation: the global batch in this many pieces
    remat: bool = False  # recompute each layer's activations in the backward pass
    on_nonfinite: str = "stop"  # stop | skip (skip the update and count it)
    max_consecutive_skips: int = 10  # skip mode: stop after more non-finite updates in a row
    log_every: int = 10
    eval_every: int = 0  # validation loss every N steps; <= 0: only at the end
    eval_batches: int = -1  # -1: the whole validation split
    checkpoint_every: int = 0  # <= 0: only at the end (and on SIGTERM/SIGINT)
    keep: int = 2  # last K checkpoints
    keep_best: int = 1  # plus the best by validation loss
    resume_fallback: bool = True  # an unreadable newest checkpoint: resume from an older one
    async_checkpoint: bool = True
    profile_steps: int = 0  # > 0: a JAX profiler trace of N steps (after the first) in WORKDIR/profile
    peak_flops: float = 0.0  # FLOP/s of the whole job for MFU; 0: measured (CPU) or a table
    progress: bool = True
    eval_at_end: bool = False  # `cotjax train` then scores the final checkpoint into workdir/eval
    wandb_project: str = ""  # Weights & Biases project to log to; empty: off (wandb not imported)

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"train.schedule must be cosine|linear|constant, got {self.schedule!r}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"train.on_nonfinite must be stop|skip, got {self.on_nonfinite!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"train.objective must be one of {OBJECTIVES}, got "
                             f"{self.objective!r}")
        if self.reward_labels not in ("hard", "soft", "checker"):
            raise ValueError("train.reward_labels must be hard|soft|checker, got "
                             f"{self.reward_labels!r}")
        if self.loss_chunk < 0:
            raise ValueError(f"train.loss_chunk must be >= 0, got {self.loss_chunk}")
        if self.microbatches < 1:
            raise ValueError(f"train.microbatches must be >= 1, got {self.microbatches}")

    @classmethod
    def from_config(cls, config) -> TrainSpec:
        section = config.get("train") or {}
        section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown train config keys {unknown}; known: {sorted(known)}")
        return cls(**section)



def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    # A preset (smollm2-135m-instruct, gemma3-270m), a .gguf file, a HF directory or a hub id.
    c.model = "smollm2-135m-instruct"
    c.param_dtype = "float32"
    c.compute_dtype = "float32"  # bfloat16 on accelerators
    # Attention without a KV cache (training, scoring): reference (cotjax's blocked causal
    # attention, the numerical reference) | fused (the backend's kernel: cuDNN on GPUs, Splash
    # on TPUs, XLA's jax.nn.dot_product_attention on CPUs)
    c.attention = "reference"

    c.data = ml_collections.ConfigDict()
    c.data.source = "gsm8k"  # gsm8k | aqua | jsonl | synthetic | hf | tfds
    c.data.path = "data/gsm8k/train.jsonl"
    # A JSONL of CoT records (question, chain, answer; e.g. from `cotjax distill`) to train on
    # instead of path's training part; validation stays path's held-out slice, and records whose
    # question is in that slice are dropped (counted, printed).
    c.data.train_path = ""
    c.data.validation_size = 500  # held out of the training file, deterministic
    c.data.template = "plain"  # plain | chat
    c.data.mode = "cot"  # cot | answer_only
    c.data.w_chain = 1.0
    c.data.w_answer = 1.0
    c.data.strip_calculator = True
    c.data.seq_len = 1024
    c.data.batch_size = 8  # global batch, rows of seq_len tokens
    c.data.overlong = "drop"  # drop | truncate
    c.data.on_bad_record = "error"  # error | skip
    # A run refuses to start when more than this share of the records read were skipped as bad
    # or dropped as longer than seq_len (both are counted and printed at start-up either way).
    c.data.max_skipped_fraction = 0.05
    c.data.shuffle = True
    c.data.num_epochs = 1  # -1: repeat forever (step-based training)
    c.data.max_examples = -1  # -1: all
    # Where records come from besides a local file (see cotjax/records.py).
    c.data.format = "fields"  # gsm8k | aqua | fields | messages: jsonl, hf and tfds record layout
    c.data.fields = ml_collections.ConfigDict(dict(
        question="question", chain="chain", answer="answer", options="options", id="id"))
    # e.g. --config.data.source=tfds --config.data.format=gsm8k on a TPU VM
    c.data.hf_name = "openai/gsm8k"
    c.data.hf_config = "main"
    c.data.hf_split = "train"
    c.data.tfds_name = "gsm8k"
    c.data.tfds_split = "train"
    c.data.tfds_data_dir = ""
    c.data.synthetic_n = 2000
    c.data.synthetic_min_steps = 2
    c.data.synthetic_max_steps = 6
    c.data.synthetic_seed = 0
    # The validation slice has its own seed so changing `seed` never moves it.
    c.data.validation_seed = 20240
    c.data.fewshot = 0  # exemplars from the train split prepended to evaluation prompts
    c.data.fewshot_seed = 0
    c.data.packer = "first_fit"  # first_fit | best_fit (grain packing transforms)
    c.data.packing_bins = 256  # rows packed at a time: more bins, less padding
    # Reward models (train.objective prm | orm): a `cotjax label-steps` output directory (orm,
    # and prm on checker labels, also take a `cotjax sample` output) or one of its jsonl
    # files, and the share of its problems held out for validation (seeded by validation_seed).
    c.data.labels = ""
    c.data.labels_validation = 0.1
    c.data.labels_split = "lines"  # the label lines' step rule (label-steps --split); rerank cuts alike

    # A HF tokenizer directory; empty: the model's own tokenizer.
    c.tokenizer = ""
    # With model="random": ModelConfig fields of a randomly initialised decoder (tests, benchmarks).
    c.model_arch = ml_collections.ConfigDict()

    c.train = ml_collections.ConfigDict(dataclasses.asdict(TrainSpec()))

    # LoRA / QLoRA (cotjax/lora.py; docs/lora.md): rank 0 trains every parameter. With rank > 0
    # the base is frozen (quantised with quant=int8 | nf4, blocks of `block` along each matrix's
    # output) and adapters sit on the layer matrices whose path (layers/wq, layers/w_gate, ...)
    # the regular expression `targets` matches; their output is scaled by alpha / rank.
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0
    c.lora.alpha = 16.0
    c.lora.dropout = 0.0
    c.lora.targets = r"layers/(wq|wk|wv|wo|w_gate|w_up|w_down)$"
    c.lora.quant = "none"  # none | int8 | nf4
    c.lora.block = 64

    # `cotjax eval` (cotjax/evaluate.py: run_eval). --data=validation means data's held-out slice.
    c.eval = ml_collections.ConfigDict()
    c.eval.task = "gsm8k"  # gsm8k | aqua (--task overrides)
    c.eval.prompting = "finetuned"  # finetuned (no exemplars) | zero_shot_cot | few_shot_cot
    c.eval.fewshot = 8  # exemplars (from data's train split, data.fewshot_seed) for few_shot_cot
    c.eval.cot_cue = "Let's think step by step."  # appended to the prompt for zero_shot_cot
    c.eval.stop = ("\nQuestion:",)  # stop strings (besides EOS); the text is cut before them
    c.eval.max_new_tokens = 256
    c.eval.batch_size = 16  # rows decoded together (rounded up to the data-parallel devices)
    c.eval.max_examples = -1  # -1: all; else the first N questions of the file
    c.eval.num_samples = 1  # > 1: self-consistency, n sampled chains and a majority vote (maj@n)
    c.eval.temperature = 0.7  # sampled chains only; the greedy pass is always run
    c.eval.top_k = 0  # 0: off
    c.eval.top_p = 1.0  # 1.0: off
    c.eval.seed = 0
    # A calculator in the loop (cotjax/calculator.py): where a chain ends an arithmetic
    # expression with '=', the true value is written for the model (eval, sample, generate).
    c.eval.calculator = False
    # Faithfulness by intervention (cotjax/faithfulness.py), opt-in: any of "early", "corrupt",
    # "filler" (or "all"), run on the greedy chains after scoring them.
    c.eval.faithfulness = ()
    c.eval.faithfulness_points = 11  # early answering: at most this many step counts per chain
    c.eval.faithfulness_answer_tokens = 16  # tokens read after the answer cue
    # Reranking the sampled chains (num_samples > 1) with reward model runs (cotjax/rerank.py):
    # every selector (majority, orm_best, prm_best, prm_weighted, pass@N) in summary["rerank"].
    c.eval.prm = ""  # a run trained with train.objective=prm
    c.eval.orm = ""  # a run trained with train.objective=orm
    c.eval.prm_aggregate = "min"  # a chain's PRM score from its steps': min | prod | last | step_min
    # `cotjax search` (cotjax/search.py): step-level beam search guided by a PRM (--prm=RUN).
    c.eval.beam_width = 4  # partial chains kept after each step
    c.eval.beam_expand = 4  # continuations sampled from each kept chain per step
    c.eval.beam_steps = 12  # steps at most (open chains are then closed as "steps")
    c.eval.beam_step_tokens = 96  # tokens one step may take (a longer one closes its chain)
    # keep distinct chains only: a policy that often writes the same step otherwise fills the
    # beam with copies of one chain (13 of 20 final beams were one chain 4 times, 2026-12-04)
    c.eval.beam_distinct = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c


def parse_arg(arg: str | None, **defaults: str) -> ml_collections.ConfigDict:
    """A config file's argument `k=v,k=v` as a locked ConfigDict over `defaults` (all strings):
    an unknown key or a missing `=` is an error naming the key and the known ones."""
    out = dict(defaults)
    for item in (arg or "").split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"config argument {item!r} is not key=value (known keys: "
                             f"{', '.join(defaults)})")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {', '.join(defaults)}")
        out[key] = value.strip()
    return ml_collections.ConfigDict(out)


def load_config(spec: str, **overrides) -> ml_collections.ConfigDict:
    """A config file's `get_config(arg)`, as `--config=PATH[:ARG]` gives it, with dotted
    `overrides` applied as `--config.a.b=value` would (an unknown key is an error)."""
    import importlib.util

    path, _, arg = str(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location("cotjax_config", path)
    if module_spec is None or module_spec.loader is None:
        raise FileNotFoundError(f"config file {path} cannot be loaded")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    apply_overrides(config, overrides, where=f"config {path}")
    return config


def did_you_mean(word: str, choices) -> str:
    """` (did you mean X?)` for the closest of `choices`, or ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def missing_key_hint(config, key: str) -> str | None:
    """None when the dotted `key` exists in `config`; else the hint naming the closest key at
    the level where the path left the config (possibly '')."""
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return did_you_mean(part, node.keys() if hasattr(node, "keys") else ())
        node = node[part]
    return None


def apply_overrides(config, overrides: dict, where: str = "config") -> None:
    """Set dotted keys (`{"train.lr": "1e-4"}`) in place, as `--config.train.lr=1e-4` would: a
    string value is converted to the type the key holds; an unknown key is a KeyError naming
    it and the closest existing one."""
    import json

    base = get_config()
    for key, value in overrides.items():
        *head, last = key.split(".")
        if missing_key_hint(config, key) is not None and missing_key_hint(base, key) is None:
            # A key added to the defaults after the config was written (a run's saved config):
            # it takes the default's place, so an old run can use a new option.
            node, default = config, base
            for part in head:
                node, default = node[part], default[part]
            with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
                node[last] = default[last]
        hint = missing_key_hint(config, key)
        if hint is not None:
            raise KeyError(f"{where} has no key {key!r}{hint}")
        node = config
        for part in head:
            node = node[part]
        try:
            node[last] = _converted(value, node[last], json) if isinstance(value, str) else value
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {key}={value!r}: {e}") from None


def _converted(text: str, current, json):
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, (tuple, list)):
        return type(current)(json.loads(text) if text.startswith("[") else [text])
    return text
