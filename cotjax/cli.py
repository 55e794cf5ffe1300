"""The `cotjax` console script: `cotjax SUBCOMMAND --config=PATH [--config.a.b=value] ...`."""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "ml_collections config file (a get_config())")
flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics)")
flags.DEFINE_string("model", None, "model spec for generate: preset, .gguf, HF dir or hub id")
flags.DEFINE_string("prompt", None, "raw prompt text for generate")
flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate")


def _generate():
    from cotjax import generate_cmd

    generate_cmd.main(FLAGS)


def _data_stats():
    from cotjax import pipeline

    pipeline.data_stats_main(FLAGS)


COMMANDS = {
    "generate": (_generate, "greedy continuation of a raw prompt"),
    "data-stats": (_data_stats, "counts, lengths and packing efficiency of a config's data"),
}


def _usage() -> str:
    lines = ["usage: cotjax SUBCOMMAND [--config=PATH] [--flag=value ...]", "", "subcommands:"]
    lines += [f"  {name:12s} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(_usage(), file=sys.stderr)
        sys.exit(0 if len(argv) >= 2 and argv[1] in ("-h", "--help") else 2)
    cmd = argv[1]
    FLAGS(argv[:1] + argv[2:])
    COMMANDS[cmd][0]()


if __name__ == "__main__":
    main()
