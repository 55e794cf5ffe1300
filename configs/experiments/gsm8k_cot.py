"""Experiment 2: CoT fine-tuning of SmolLM2-135M-Instruct on GSM8K (one pass over the training
split minus the 500-problem validation slice).

Sized for what was at hand (the 2-core CPU: about 1.5 h of training). Rows of 512 tokens hold
every GSM8K example (the longest is 471 tokens with the chat template); 8 rows per step in two
micro-batches of 4 keep memory under 12 GB. `launch/experiment_gsm8k.sh` trains this and
`gsm8k_answer_only.py` and evaluates both and the base model on the validation slice.
"""

try:
    from configs import gsm8k_smollm2
except ImportError:  # loaded by file path from outside the repository root
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from configs import gsm8k_smollm2


def get_config():
    c = gsm8k_smollm2.get_config()  # SmolLM2-135M-Instruct, chat template, cot mode
    c.data.seq_len = 512
    c.data.batch_size = 8
    c.data.num_epochs = 1
    c.train.microbatches = 2
    c.train.lr = 5e-5
    c.train.warmup_steps = 20
    c.train.log_every = 5
    c.train.eval_every = 50
    c.train.eval_batches = 8  # 64 rows, ~190 validation problems: a cheap validation-loss curve
    c.train.checkpoint_every = 20
    c.train.eval_at_end = False  # the experiment script evaluates the whole validation slice
    c.eval.batch_size = 64
    return c
