"""The README's main command: CoT fine-tune SmolLM2-135M-Instruct on a few hundred GSM8K problems.

    cotjax train --config=configs/quickstart.py --workdir=runs/quickstart

On a 2-core CPU: 200 problems, one epoch of 8 x 512-token rows, a short validation loss, then
`train.eval_at_end` scores the fine-tuned checkpoint on the first 100 validation questions
(greedy) into WORKDIR/eval (the README gives the measured wall time).
"""

from cotjax import defaults


def get_config(arg=None):
    c = defaults.get_config()
    c.model = "smollm2-135m-instruct"
    c.compute_dtype = "auto"  # bfloat16 on accelerators, float32 on CPU
    c.data.source = "gsm8k"
    c.data.template = "chat"
    c.data.max_examples = 200
    c.data.seq_len = 512
    c.data.batch_size = 8
    c.data.num_epochs = 1
    c.train.steps = -1  # one epoch of the 200 problems
    c.train.lr = 5e-5
    c.train.warmup_steps = 2
    c.train.schedule = "cosine"
    c.train.weight_decay = 0.0
    c.train.log_every = 1
    c.train.eval_every = 0  # validation loss at the end only
    c.train.eval_batches = 4
    c.train.checkpoint_every = 0
    c.train.eval_at_end = True
    c.eval.max_examples = 100
    c.eval.batch_size = 50
    return c
