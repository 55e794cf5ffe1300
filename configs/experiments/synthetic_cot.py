"""Experiment 1: CoT fine-tuning of SmolLM2-135M-Instruct on the synthetic arithmetic task.

Trains on problems of 1-4 operations; `launch/experiment_synthetic.sh` evaluates on held-out
problems of 1-8 operations and compares with `synthetic_answer_only.py`, which sees the same
number of training tokens (same steps x batch x seq_len rows) but only the answers.
Sized for the 2-core CPU (about 10 minutes of training); scale `train.steps` on an accelerator.
"""

try:
    from configs import synthetic_smollm2
except ImportError:  # loaded by file path from outside the repository root
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from configs import synthetic_smollm2


def get_config():
    c = synthetic_smollm2.get_config()  # SmolLM2-135M-Instruct, chat template, cot mode
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
