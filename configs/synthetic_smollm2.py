"""SmolLM2-135M-Instruct on the synthetic multi-step arithmetic task (no download needed).

The CoT-vs-answer-only experiment: run once as is and once with
`--config.data.mode=answer_only`, then evaluate both; difficulty by
`--config.data.synthetic_min_steps/max_steps`.
"""

try:
    from configs import base
except ImportError:  # loaded by file path from outside the repository root
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from configs import base


def get_config():
    c = base.get_config()
    c.model = "smollm2-135m-instruct"
    c.compute_dtype = "auto"
    c.data.source = "synthetic"
    c.data.synthetic_n = 2000
    c.data.synthetic_min_steps = 2
    c.data.synthetic_max_steps = 6
    c.data.validation_size = 200
    c.data.template = "chat"
    c.data.mode = "cot"
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
    return c
