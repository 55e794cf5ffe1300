"""cotjax: chain-of-thought fine-tuning of pretrained language models in JAX/Flax NNX."""

from cotjax import host as _host

__version__ = "0.1.0"

# Before anything starts JAX's CPU backend: the XLA CPU settings measured best for this CPU.
_host.apply_xla_defaults()
