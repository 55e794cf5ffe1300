"""`cotjax export`: a run's checkpoint as a HF directory (config.json, model.safetensors,
tokenizer), loadable by transformers and vLLM; a LoRA run's adapters merged into its base, or
with `--adapter` alone as a PEFT adapter directory for `peft.PeftModel.from_pretrained`.

The directory is written whole into a temporary sibling and then renamed into place, so an
export never mixes with the files of an older one (a stale `model.safetensors.index.json` beside
a new `model.safetensors` would make two tools load two models). A non-empty destination is
refused unless `overwrite`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from cotjax import load, paths, weights


def _non_empty(dest) -> bool:
    return dest.exists() and (not dest.is_dir() or any(True for _ in dest.iterdir()))


def main(workdir: str, out: str, step=None, overwrite: bool = False,
         adapter: bool = False) -> None:
    dest = paths.path(out)
    if _non_empty(dest) and not overwrite:
        raise FileExistsError(f"{out} is not empty: pass --overwrite to replace it whole")
    if not paths.is_remote(out) and not paths.is_remote(workdir):
        run, target = os.path.abspath(workdir), os.path.abspath(out)
        if run == target or run.startswith(target.rstrip(os.sep) + os.sep):
            raise ValueError(f"--out={out} holds the run being exported ({workdir}): "
                             "export somewhere else")
    model, cfg, tokenizer, config = load.load_run_model(workdir, step)
    if adapter and cfg.lora is None:
        raise ValueError(f"--adapter: {workdir} is not a LoRA run (it trained every parameter); "
                         "export the merged model without --adapter")
    if adapter and load.parse_step(step) == "base":
        raise ValueError("--adapter --step=base: the base model has no trained adapters; "
                         "export it without --adapter")
    layers = "model.layers"
    if adapter:
        try:  # the base's own config.json says where its layers sit
            layers = weights.peft_layers_prefix(weights.read_config(str(config.model)))
        except (OSError, ValueError) as e:
            print(f"note: {config.model}'s config.json is not readable here ({e}); the adapter "
                  "keys assume the plain causal-LM layout (model.layers)")

    def write(directory):
        if adapter:
            weights.export_peft(model, directory, base_model=str(config.model), layers=layers)
        else:
            weights.export_hf(model, directory, tokenizer)
    if paths.is_remote(out):
        tmp = tempfile.mkdtemp(prefix="cotjax-export-")
        write(tmp)
        if dest.exists():
            dest.rmtree()
        paths.copy_tree(tmp, dest)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        parent = os.path.dirname(os.path.abspath(out))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
        try:
            write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the export from other users
        old = None
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old.", dir=parent)
            os.rename(out, os.path.join(old, "x"))
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    step = load.parse_step(step)
    print(json.dumps({"exported": str(out), "workdir": str(workdir),
                      "step": step if step is not None else "latest",
                      "format": "peft_adapter" if adapter else "hf"}))

