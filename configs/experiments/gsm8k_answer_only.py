"""Experiment 2, the baseline: the same run as `gsm8k_cot.py` (same problems, one pass, same
optimiser) trained on answers alone: the target is "The answer is N."."""

try:
    from configs.experiments import gsm8k_cot
except ImportError:  # loaded by file path from outside the repository root
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from configs.experiments import gsm8k_cot


def get_config():
    c = gsm8k_cot.get_config()
    c.data.mode = "answer_only"
    return c
