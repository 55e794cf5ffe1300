"""The `cotjax` console script: `cotjax SUBCOMMAND --config=PATH [--config.a.b=value] ...`.

Each subcommand lives in the module of its stage; this file only parses flags and dispatches.
"""

from __future__ import annotations

import importlib
import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "ml_collections config file (a get_config())")
flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics)")
flags.DEFINE_string("model", None, "model spec: preset, .gguf file, HF directory or hub id")
flags.DEFINE_string("prompt", None, "raw prompt text (generate)")
flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate (generate)")
flags.DEFINE_string("task", None, "gsm8k | aqua (eval)")
flags.DEFINE_string("data", None, "JSONL file in raw GSM8K or AQuA-RAT format (eval)")
flags.DEFINE_string("out", None, "output directory (eval, export)")
flags.DEFINE_string("step", None, "checkpoint step: latest (default), a number, or 'base' (eval, export)")

# name: (module, function, help)
COMMANDS = {
    "train": ("cotjax.train", "main", "CoT fine-tune a model (resumes from the workdir)"),
    "eval": ("cotjax.evaluate", "main", "decode and score a checkpoint or the base model"),
    "generate": ("cotjax.decode", "generate_main", "greedy continuation of a raw prompt"),
    "export": ("cotjax.checkpoint", "export_main", "write a checkpoint as a HF directory"),
    "data-stats": ("cotjax.pipeline", "data_stats_main", "lengths and packing efficiency of a config"),
}


def load_config(path: str, **overrides):
    """A config file's `get_config()` with dotted overrides, as `--config.a.b=value` would give."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cotjax_config", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"config file {path} cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        parent = config
        *head, last = key.split(".")
        for part in head:
            parent = parent[part]
        if last not in parent:
            raise KeyError(f"config {path} has no key {key!r}")
        parent[last] = value
    return config


def _usage() -> str:
    lines = ["usage: cotjax SUBCOMMAND [--config=PATH] [--flag=value ...]", "", "subcommands:"]
    lines += [f"  {name:12s} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(_usage(), file=sys.stderr)
        sys.exit(0 if len(argv) >= 2 and argv[1] in ("-h", "--help") else 2)
    module, fn, _ = COMMANDS[argv[1]]
    FLAGS(argv[:1] + argv[2:])
    getattr(importlib.import_module(module), fn)(FLAGS)


if __name__ == "__main__":
    main()
