"""Per-device training memory of every configs/large.py architecture x method x machine.

    python benchmarks/memory_math.py [--markdown]

`cotjax.memory.estimate` for each `configs/large.py:model=M,method=X,hardware=H`: weights,
gradients and Adam state exactly (abstract parameters placed by the sharding rules), activations
and logits estimated (see cotjax/memory.py). Prints one JSON object per line, or with
`--markdown` the table of docs/large_models.md. Allocates nothing; runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rows():
    import importlib.util

    from cotjax import defaults, memory

    spec = importlib.util.spec_from_file_location("large", ROOT / "configs/large.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for model in module.ARCHS:
        for method in module.METHODS:
            for hardware, (_, gb) in module.HARDWARE.items():
                config = defaults.load_config(
                    str(ROOT / f"configs/large.py:model={model},method={method},hardware={hardware}"))
                est = memory.estimate(config)
                yield {"model": model, "method": method, "hardware": hardware,
                       "device_gib": gb * 1e9 / memory.GIB,
                       **{k: v for k, v in est.items() if k != "mesh"},
                       "fits": est["total"] <= 0.9 * gb * 1e9}


def markdown(results) -> str:
    from cotjax.memory import GIB

    hw = list(dict.fromkeys(r["hardware"] for r in results))
    lines = ["| model | params | method | " + " | ".join(hw) + " |",
             "|---|---|---|" + "---|" * len(hw)]
    by = {(r["model"], r["method"], r["hardware"]): r for r in results}
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in results):
        first = by[(model, method, hw[0])]
        cells = []
        for h in hw:
            r = by[(model, method, h)]
            cells.append(f"{r['total'] / GIB:.1f}{'' if r['fits'] else ' ✗'}")
        lines.append(f"| {model} | {first['params'] / 1e9:.2f}B | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    results = list(rows())
    if args.markdown:
        print(markdown(results))
    else:
        for r in results:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
