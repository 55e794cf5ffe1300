"""`cotjax export`: a run's checkpoint as a HF directory (config.json, model.safetensors,
tokenizer), loadable by transformers and vLLM."""

from __future__ import annotations

import json

from cotjax import load, weights


def main(workdir: str, out: str, step=None, overwrite: bool = False) -> None:
    model, _, tokenizer, _ = load.load_run_model(workdir, step)
    path = weights.export_hf(model, out, tokenizer)
    step = load.parse_step(step)
    print(json.dumps({"exported": str(path), "workdir": str(workdir),
                      "step": step if step is not None else "latest"}))
