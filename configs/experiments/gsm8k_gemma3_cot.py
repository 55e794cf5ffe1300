"""Experiment 3: the same GSM8K CoT fine-tuning as `gsm8k_cot.py` for Gemma 3 270M (plain
template; 262k-vocab logits, so four micro-batches of two rows)."""

try:
    from configs.experiments import gsm8k_cot
except ImportError:  # loaded by file path from outside the repository root
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from configs.experiments import gsm8k_cot


def get_config():
    c = gsm8k_cot.get_config()
    c.model = "gemma3-270m"
    c.data.template = "plain"
    c.train.microbatches = 4
    c.eval.batch_size = 32
    return c
