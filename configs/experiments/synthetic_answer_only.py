"""Experiment 1, the baseline: the same run as `synthetic_cot.py`, trained on answers alone
(the target is "The answer is N."; same steps, batch and row length, so the same tokens seen)."""

try:
    from configs.experiments import synthetic_cot
except ImportError:  # loaded by file path from outside the repository root
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from configs.experiments import synthetic_cot


def get_config():
    c = synthetic_cot.get_config()
    c.data.mode = "answer_only"
    return c
