"""Full CoT fine-tuning of Gemma 3 270M on GSM8K train (the second architecture; 262k vocab)."""

try:
    from configs import base
except ImportError:  # loaded by file path from outside the repository root
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from configs import base


def get_config():
    c = base.get_config()
    c.model = "gemma3-270m"
    c.compute_dtype = "auto"
    c.data.template = "plain"
    c.data.seq_len = 1024
    c.data.batch_size = 16
    c.data.num_epochs = 3
    c.train.steps = -1
    c.train.lr = 1e-5
    c.train.warmup_steps = 50
    c.train.schedule = "cosine"
    c.train.weight_decay = 0.01
    c.train.microbatches = 2  # the 262k-vocab logits of 16 x 1024 tokens are large
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.train.eval_at_end = True
    return c
