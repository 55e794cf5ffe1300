"""CoT (or answer-only) fine-tuning on the generated multi-step arithmetic task (no download).

    cotjax train --config=configs/synthetic.py --workdir=runs/synthetic
    cotjax train --config=configs/synthetic.py:recipe=experiment,mode=answer_only --workdir=W

Arguments: `model` (default smollm2-135m-instruct), `mode` (cot | answer_only), `recipe`:
  full (default): 2000 problems of 2-6 operations, 300 steps of 16 x 512-token rows
  experiment: experiment 1 (launch/experiment_synthetic.sh): 4000 problems of 1-4 operations,
    30 steps of 8 x 512-token rows at lr 1e-4; scored on held-out problems of 1-8 operations
"""

from cotjax import defaults


def get_config(arg=None):
    a = defaults.parse_arg(arg, model="smollm2-135m-instruct", mode="cot", recipe="full")
    if a.recipe not in ("experiment", "full"):
        raise ValueError(f"configs/synthetic.py: recipe must be experiment or full, got {a.recipe!r}")
    c = defaults.get_config()
    c.model = a.model
    c.compute_dtype = "auto"
    c.data.source = "synthetic"
    c.data.synthetic_n = 2000
    c.data.synthetic_min_steps = 2
    c.data.synthetic_max_steps = 6
    c.data.validation_size = 200
    c.data.template = "chat"
    c.data.mode = a.mode
    c.data.seq_len = 512
    c.data.batch_size = 16
    c.data.num_epochs = -1
    c.train.steps = 300
    c.train.lr = 5e-5
    c.train.warmup_steps = 20
    c.train.schedule = "cosine"
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.eval_batches = 8
    c.train.checkpoint_every = 100
    c.train.eval_at_end = True
    if a.recipe == "full":
        return c
    c.data.synthetic_n = 4000
    c.data.synthetic_min_steps = 1
    c.data.synthetic_max_steps = 4
    c.data.validation_size = 100
    c.data.batch_size = 8
    c.train.steps = 30
    c.train.lr = 1e-4
    c.train.warmup_steps = 3
    c.train.log_every = 5
    c.train.eval_every = 0
    c.train.eval_batches = 2
    c.train.checkpoint_every = 10
    c.train.eval_at_end = False  # the experiment script evaluates on held-out longer problems
    c.eval.task = "gsm8k"  # numeric answers; the synthetic files use GSM8K's raw format
    c.eval.max_new_tokens = 128
    c.eval.batch_size = 64
    return c
