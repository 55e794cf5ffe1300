"""Full CoT fine-tuning of SmolLM2-135M-Instruct on GSM8K train (3 epochs; ~3 h/epoch on CPU,
minutes on one GPU)."""

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
    c.data.template = "chat"
    c.data.seq_len = 1024
    c.data.batch_size = 16
    c.data.num_epochs = 3
    c.train.steps = -1
    c.train.lr = 2e-5
    c.train.warmup_steps = 50
    c.train.schedule = "cosine"
    c.train.weight_decay = 0.01
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.train.eval_at_end = True
    return c
