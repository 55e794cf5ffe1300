"""Experiment 3, the baseline: `gsm8k_gemma3_cot.py` (Gemma 3 270M, same problems, one pass, same
optimiser) trained on answers alone: the target is "The answer is N."."""

try:
    from configs.experiments import gsm8k_gemma3_cot
except ImportError:  # loaded by file path from outside the repository root
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from configs.experiments import gsm8k_gemma3_cot


def get_config():
    c = gsm8k_gemma3_cot.get_config()
    c.data.mode = "answer_only"
    return c
