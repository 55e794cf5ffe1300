"""CoT (or answer-only) fine-tuning on GSM8K: one file for the family of runs.

    cotjax train --config=configs/gsm8k.py --workdir=runs/cot
    cotjax train --config=configs/gsm8k.py:mode=answer_only --workdir=runs/answer_only
    cotjax train --config=configs/gsm8k.py:model=gemma3-270m,recipe=full --workdir=runs/g
    cotjax train --config=configs/gsm8k.py:train=runs/distill/kept.jsonl --workdir=runs/rft

Arguments (after the ':', comma-separated):
  model   smollm2-135m-instruct (default) | gemma3-270m | any model spec (a .gguf, a HF directory)
  mode    cot (chain + answer; default) | answer_only (the target is "The answer is N.")
  recipe  experiment (default): one pass over GSM8K train minus the 500-problem validation slice
            in 8 x 512-token rows, AdamW lr 5e-5, 20 warmup steps, cosine; sized for a 2-core CPU
            (about 1.5 h for SmolLM2) and used by launch/experiment_gsm8k.sh and the sweep
          full: 3 epochs of 16 x 1024-token rows (minutes on one GPU)
  train   a JSONL of CoT records to train on instead of GSM8K train (e.g. `cotjax distill`'s
          output; default: none); validation stays GSM8K's 500-problem slice

Gemma 3 uses the plain template (its chat template has no system turn), the others their chat
template.
"""

from cotjax import defaults


def get_config(arg=None):
    a = defaults.parse_arg(arg, model="smollm2-135m-instruct", mode="cot", recipe="experiment",
                          train="")
    if a.recipe not in ("experiment", "full"):
        raise ValueError(f"configs/gsm8k.py: recipe must be experiment or full, got {a.recipe!r}")
    gemma = "gemma" in a.model.rsplit("/", 1)[-1].lower()  # a preset name or a .gguf path
    c = defaults.get_config()
    c.model = a.model
    c.compute_dtype = "auto"  # bfloat16 on accelerators, float32 on CPU
    c.data.mode = a.mode
    c.data.train_path = a.train
    c.data.template = "plain" if gemma else "chat"
    c.data.num_epochs = 3
    c.train.steps = -1  # as many as the epochs give
    c.train.schedule = "cosine"
    c.train.weight_decay = 0.01
    c.train.log_every = 10
    c.train.eval_at_end = True
    if a.recipe == "full":
        c.data.seq_len = 1024
        c.data.batch_size = 16
        c.train.lr = 1e-5 if gemma else 2e-5
        c.train.warmup_steps = 50
        if gemma:
            c.train.microbatches = 2  # the 262k-vocab logits of 16 x 1024 tokens are large
        c.train.eval_every = 200
        c.train.checkpoint_every = 200
        return c
    # Rows of 512 tokens hold every GSM8K example (the longest is 471 tokens with the chat
    # template); 8 rows per step in micro-batches keep memory under 12 GB on the CPU.
    c.data.seq_len = 512
    c.data.batch_size = 8
    c.data.num_epochs = 1
    c.train.microbatches = 4 if gemma else 2
    c.train.lr = 5e-5
    c.train.warmup_steps = 20
    c.train.log_every = 5
    c.train.eval_every = 50
    c.train.eval_batches = 8  # 64 rows, ~190 validation problems: a cheap validation-loss curve
    c.train.checkpoint_every = 20
    c.train.eval_at_end = False  # the experiment script evaluates the whole validation slice
    c.eval.batch_size = 32 if gemma else 64
    return c
