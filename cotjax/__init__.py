"""cotjax: chain-of-thought fine-tuning of pretrained language models in JAX/Flax NNX."""

__version__ = "0.1.0"
