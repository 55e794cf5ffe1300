"""One NNX decoder family: Llama/SmolLM2, Mistral, Qwen2/2.5, Qwen3 and Gemma 3 text.

Layer parameters are stacked on a leading `layers` axis and the blocks run under `lax.scan`, so a
30-layer model compiles as one block. Every parameter carries `logical_axes` metadata (vocab,
embed, heads, kv_heads, head_dim, mlp, layers); `cotjax.sharding` maps them to mesh axes.

Shape suffixes: B batch, T query length, S key length (cache slots), D embed, N query heads,
K kv heads, G = N/K query heads per kv head, H head dim, F mlp, V vocab, L layers.

Attention masks come from three per-token arrays, so one code path serves training on packed rows
and cached decoding: segment ids (0 = padding/empty slot; tokens attend only within their
segment), positions (rope, sliding window) and slot indices (causality).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from cotjax import lora as lora_lib
from cotjax import splash

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")
HEADS = ("lm", "reward")
ATTENTION = ("reference", "fused")  # ModelConfig.attention (see _attention)
Q_BLOCK = 128  # queries per block of causal attention without a cache (see _attention)
_HF_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
}


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one layer type. kind: default | linear | llama3."""

    theta: float
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    norm_eps: float
    rope: RopeConfig
    local_rope: RopeConfig | None = None  # Gemma 3 sliding layers use their own rope base
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # "full" | "sliding" per layer; empty: all full
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    act: str = "silu"  # silu | gelu_tanh
    gemma: bool = False  # (1 + w) norms, post-attention/-mlp norms, sqrt(d) embedding scale
    query_scale: float | None = None  # attention scale; default head_dim ** -0.5
    attn_softcap: float | None = None
    final_softcap: float | None = None
    max_position_embeddings: int = 8192
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: bool = False
    head: str = "lm"  # lm (next-token logits) | reward (a step/outcome score; see Decoder.reward)
    lora: lora_lib.LoraSpec | None = None  # adapters on a frozen (maybe quantised) base
    attention: str = "reference"  # training attention: reference | fused (jax.nn.dot_product_attention)

    def __post_init__(self):
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {self.attention!r}")
        if self.attention == "fused" and self.attn_softcap:
            raise ValueError("attention='fused' has no attention logit soft-capping "
                             f"(attn_softcap={self.attn_softcap}): use attention='reference'")
        if self.head not in HEADS:
            raise ValueError(f"model head must be one of {HEADS}, got {self.head!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"unsupported model family {self.family!r}; supported: {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if "sliding" in self.layer_types and not self.sliding_window:
            raise ValueError("sliding layers need a sliding_window")

    @property
    def is_sliding(self) -> tuple[bool, ...]:
        return tuple(t == "sliding" for t in self.layer_types) or (False,) * self.num_layers

    @property
    def scale(self) -> float:
        return self.query_scale if self.query_scale is not None else self.head_dim**-0.5

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        """JSON-able fields (a run's model_config.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """The inverse of `to_dict` (lists back to tuples, rope dicts back to RopeConfig)."""
        d = dict(d)
        d["rope"] = RopeConfig(**d["rope"])
        if d.get("local_rope"):
            d["local_rope"] = RopeConfig(**d["local_rope"])
        for key in ("layer_types", "eos_token_ids"):
            d[key] = tuple(d.get(key) or ())
        if d.get("lora"):
            d["lora"] = lora_lib.LoraSpec.from_dict(d["lora"])
        return cls(**d)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> ModelConfig:
        """Build from a HF `config.json` dict (transformers 4.x or 5.x key spellings)."""
        if hf.get("model_type") == "gemma3" and "text_config" in hf:
            hf = {**hf["text_config"], "model_type": "gemma3_text"}
        mt = hf.get("model_type")
        if mt not in _HF_MODEL_TYPES:
            raise ValueError(
                f"unsupported architecture model_type={mt!r} ({hf.get('architectures')}); "
                f"supported model types: {sorted(_HF_MODEL_TYPES)}")
        family = _HF_MODEL_TYPES[mt]
        gemma = family == "gemma3"
        n_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
        n_layers = hf["num_hidden_layers"]
        global_rope, local_rope = _hf_ropes(hf, gemma)
        eos = hf.get("eos_token_id")
        kw = dict(
            family=family,
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            num_layers=n_layers,
            num_heads=n_heads,
            num_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=head_dim,
            mlp_dim=hf["intermediate_size"],
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope=global_rope,
            local_rope=local_rope,
            sliding_window=hf.get("sliding_window"),
            layer_types=_hf_layer_types(hf, family, n_layers),
            tie_embeddings=hf.get("tie_word_embeddings", gemma),
            qkv_bias=family == "qwen2" or bool(hf.get("attention_bias", False)),
            o_bias=family != "qwen2" and bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=family in ("qwen3", "gemma3"),
            act="gelu_tanh" if gemma else "silu",
            gemma=gemma,
            query_scale=hf.get("query_pre_attn_scalar", 256) ** -0.5 if gemma else None,
            attn_softcap=hf.get("attn_logit_softcapping"),
            final_softcap=hf.get("final_logit_softcapping"),
            max_position_embeddings=hf.get("max_position_embeddings", 8192),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ()),
            pad_token_id=hf.get("pad_token_id"),
        )
        if "sliding" not in kw["layer_types"]:
            kw["sliding_window"] = None
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` dict of this architecture (transformers loads it back)."""
        if self.head != "lm":
            raise ValueError(f"a model with head={self.head!r} (a reward model) has no "
                             "transformers causal-LM export; export the policy it started from")
        model_type = {"gemma3": "gemma3_text"}.get(self.family, self.family)
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                "gemma3": "Gemma3ForCausalLM"}[self.family]
        d: dict[str, Any] = dict(
            architectures=[arch], model_type=model_type, vocab_size=self.vocab_size,
            hidden_size=self.d_model, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim, intermediate_size=self.mlp_dim, rms_norm_eps=self.norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_embeddings, torch_dtype="float32",
            rope_theta=self.rope.theta, rope_scaling=_rope_to_hf(self.rope),
        )
        if self.bos_token_id is not None:
            d["bos_token_id"] = self.bos_token_id
        if self.eos_token_ids:
            d["eos_token_id"] = list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else self.eos_token_ids[0]
        if self.pad_token_id is not None:
            d["pad_token_id"] = self.pad_token_id
        if self.family == "llama":
            d.update(attention_bias=self.o_bias, mlp_bias=self.mlp_bias, hidden_act="silu")
        elif self.family in ("mistral", "qwen2", "qwen3"):
            d.update(hidden_act="silu", sliding_window=self.sliding_window,
                     use_sliding_window=self.sliding_window is not None)
            if self.family == "qwen3":
                d["attention_bias"] = self.qkv_bias
        if self.layer_types and self.family != "llama":
            d["layer_types"] = [_HF_LAYER_NAMES[t] for t in self.layer_types]
        if self.gemma:
            d.update(hidden_activation="gelu_pytorch_tanh", sliding_window=self.sliding_window,
                     query_pre_attn_scalar=round(self.scale**-2),
                     rope_local_base_freq=self.local_rope.theta if self.local_rope else 10000.0,
                     final_logit_softcapping=self.final_softcap,
                     attn_logit_softcapping=self.attn_softcap)
        return d


_HF_LAYER_NAMES = {"full": "full_attention", "sliding": "sliding_attention"}


def _rope_from_hf(theta: float, scaling: dict | None) -> RopeConfig:
    if not scaling:
        return RopeConfig(theta=float(theta))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return RopeConfig(theta=float(theta))
    if kind == "linear":
        return RopeConfig(theta=float(theta), kind="linear", factor=float(scaling["factor"]))
    if kind == "llama3":
        return RopeConfig(
            theta=float(theta), kind="llama3", factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position=int(scaling["original_max_position_embeddings"]))
    raise ValueError(f"unsupported rope scaling {kind!r}; supported: default, linear, llama3")


def _rope_to_hf(rope: RopeConfig) -> dict | None:
    if rope.kind == "default":
        return None
    if rope.kind == "linear":
        return {"rope_type": "linear", "factor": rope.factor}
    return {"rope_type": "llama3", "factor": rope.factor, "low_freq_factor": rope.low_freq_factor,
            "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_max_position}


def _hf_ropes(hf: dict, gemma: bool) -> tuple[RopeConfig, RopeConfig | None]:
    params = hf.get("rope_parameters")
    if params and gemma and "full_attention" in params:  # transformers 5: per layer type
        full, sliding = params["full_attention"], params.get("sliding_attention", {})
        return (_rope_from_hf(full["rope_theta"], full),
                _rope_from_hf(sliding.get("rope_theta", 10000.0), sliding))
    if params:  # transformers 5: one dict holding theta and scaling
        glob = _rope_from_hf(params.get("rope_theta", 10000.0), params)
    else:
        glob = _rope_from_hf(hf.get("rope_theta", 10000.0), hf.get("rope_scaling"))
    local = RopeConfig(theta=float(hf.get("rope_local_base_freq", 10000.0))) if gemma else None
    return glob, local


def _hf_layer_types(hf: dict, family: str, n_layers: int) -> tuple[str, ...]:
    names = {v: k for k, v in _HF_LAYER_NAMES.items()}
    if hf.get("layer_types"):
        types = tuple(names[t] for t in hf["layer_types"])
    elif family == "gemma3":
        pattern = hf.get("sliding_window_pattern", 6)
        types = tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(n_layers))
    elif family == "mistral" and hf.get("sliding_window"):
        types = ("sliding",) * n_layers
    elif family in ("qwen2", "qwen3") and hf.get("use_sliding_window") and hf.get("sliding_window"):
        first = hf.get("max_window_layers", n_layers)
        types = tuple("sliding" if i >= first else "full" for i in range(n_layers))
    else:
        types = ("full",) * n_layers
    if "sliding" not in types:
        return ("full",) * n_layers
    return types


# ----------------------------------------------------------------------------------------------
# Parameters


def layer_param_shapes(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Per-layer parameter shapes and logical axes (without the leading `layers` axis)."""
    D, N, K, H, F = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    p = {
        "attn_norm": ((D,), ("embed",)),
        "wq": ((D, N, H), ("embed", "heads", "head_dim")),
        "wk": ((D, K, H), ("embed", "kv_heads", "head_dim")),
        "wv": ((D, K, H), ("embed", "kv_heads", "head_dim")),
        "wo": ((N, H, D), ("heads", "head_dim", "embed")),
        "mlp_norm": ((D,), ("embed",)),
        "w_gate": ((D, F), ("embed", "mlp")),
        "w_up": ((D, F), ("embed", "mlp")),
        "w_down": ((F, D), ("mlp", "embed")),
    }
    if cfg.qkv_bias:
        p.update(bq=((N, H), ("heads", "head_dim")), bk=((K, H), ("kv_heads", "head_dim")),
                 bv=((K, H), ("kv_heads", "head_dim")))
    if cfg.o_bias:
        p["bo"] = ((D,), ("embed",))
    if cfg.mlp_bias:
        p.update(b_gate=((F,), ("mlp",)), b_up=((F,), ("mlp",)), b_down=((D,), ("embed",)))
    if cfg.qk_norm:
        p.update(q_norm=((H,), ("head_dim",)), k_norm=((H,), ("head_dim",)))
    if cfg.gemma:
        p.update(post_attn_norm=((D,), ("embed",)), post_mlp_norm=((D,), ("embed",)))
    return p


def _init_value(key, name: str, shape, cfg: ModelConfig, dtype):
    if name.endswith("norm"):  # Gemma norms scale by (1 + w)
        return jnp.zeros(shape, dtype) if cfg.gemma else jnp.ones(shape, dtype)
    if name.startswith("b"):
        return jnp.zeros(shape, dtype)
    return (0.02 * jax.random.normal(key, shape)).astype(dtype)


class DropoutKey(nnx.Variable):
    """A PRNG key set on a decoder for one training step (`Decoder.dropout_key`): LoRA dropout."""


class Quantized(nnx.Variable):
    """A frozen quantised base matrix's codes or block scales (QLoRA; cotjax.lora)."""


class Layers(nnx.Module):
    """All decoder blocks' parameters, stacked on a leading `layers` axis. With `cfg.lora`, a
    matrix may be stored quantised (`{name}_codes`, `{name}_scale`) and carry an adapter
    (`{name}_lora_a`, `{name}_lora_b`)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.param_dtype)
        spec, L = cfg.lora, cfg.num_layers
        for name, (shape, axes) in layer_param_shapes(cfg).items():
            axes = ("layers", *axes)
            if lora_lib.quantized(spec, name):
                codes, code_dtype, scales = lora_lib.storage_shapes(spec, name, shape)
                setattr(self, f"{name}_codes", Quantized(jnp.zeros((L, *codes), code_dtype),
                                                         logical_axes=axes))
                # one scale per block of the output: that axis is not sharded
                n_in = lora_lib.MATRICES[name]
                setattr(self, f"{name}_scale", Quantized(jnp.ones((L, *scales), jnp.float32),
                                                         logical_axes=(*axes[:1 + n_in], None)))
            else:
                value = _init_value(rngs.params(), name, (L, *shape), cfg, dtype)
                setattr(self, name, nnx.Param(value, logical_axes=axes))
            if spec is not None and name in spec.targets:
                (a_shape, a_axes), (b_shape, b_axes) = lora_lib.adapter_shapes(
                    name, shape, axes[1:], spec.rank)
                a = 0.02 * jax.random.normal(rngs.params(), (L, *a_shape))
                setattr(self, f"{name}_lora_a", nnx.LoRAParam(a, logical_axes=("layers", *a_axes)))
                setattr(self, f"{name}_lora_b", nnx.LoRAParam(
                    jnp.zeros((L, *b_shape)), logical_axes=("layers", *b_axes)))

    def arrays(self) -> dict[str, jax.Array]:
        return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Variable)}


@struct.dataclass
class KVCache:
    """Keys/values of every layer for S slots, with the segment id and position of each slot.

    One buffer per layer (a tuple, not one stacked [L, ...] array): a decode step then reads each
    layer's keys in place and writes one slot, where slicing a layer out of a stacked cache made
    XLA copy it at every token (432 vs 224 ms per token on CPU, B=64, S=384). Keys are stored
    transposed, [B, K, H, S], so that the scores q @ k are a plain (not transposed) batched matmul:
    on the CPU that product took 1.7 ms per layer as `bkgth,bksh` and 0.47 ms as `bkgth,bkhs`.
    """

    k_BKHS: tuple[jax.Array, ...]
    v_BKSH: tuple[jax.Array, ...]
    segment_ids_BS: jax.Array  # 0 = empty slot
    positions_BS: jax.Array
    # int32: the slot the next token is written to; a scalar (slots filled so far, every row)
    # or [B], one per row (the sampling engine's rows, each at its own length)
    index: jax.Array

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, slots: int, dtype=None) -> KVCache:
        dtype = jnp.dtype(dtype or cfg.compute_dtype)
        B, K, S, H = batch, cfg.num_kv_heads, slots, cfg.head_dim

        def per_layer(shape):
            return tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))

        return cls(per_layer((B, K, H, S)), per_layer((B, K, S, H)),
                   jnp.zeros((B, S), jnp.int32), jnp.zeros((B, S), jnp.int32),
                   jnp.zeros((), jnp.int32))


class Decoder(nnx.Module):
    """Decoder-only transformer; `__call__` maps tokens to next-token logits.

    With `cfg.head == "reward"` (a process or outcome reward model) it also holds a scalar
    scoring head, `reward(hidden)`: one logit per position, read at step ends. A linear head
    rather than the LM head restricted to two label tokens: it needs no label tokens in the
    vocabulary (the same for every family), never computes vocabulary-sized logits (262k for
    Gemma), and starts at exactly p = 0.5 (zero init) instead of at whatever the two tokens'
    embeddings happen to say.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.param_dtype)
        V, D = cfg.vocab_size, cfg.d_model
        self.embed = nnx.Param((0.02 * jax.random.normal(rngs.params(), (V, D))).astype(dtype),
                               logical_axes=("vocab", "embed"))
        self.layers = Layers(cfg, rngs)
        self.final_norm = nnx.Param(_init_value(None, "final_norm", (D,), cfg, dtype),
                                    logical_axes=("embed",))
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Param(
                (0.02 * jax.random.normal(rngs.params(), (D, V))).astype(dtype),
                logical_axes=("embed", "vocab"))
        if cfg.head == "reward":
            self.reward_head = nnx.Param(jnp.zeros((D,), dtype), logical_axes=("embed",))
            self.reward_bias = nnx.Param(jnp.zeros((1,), dtype), logical_axes=(None,))

    def __call__(self, tokens_BT, positions_BT, segment_ids_BT=None, cache: KVCache | None = None,
                 layers=None):
        """Logits [B, T, V] (float32) and the updated cache (None without one)."""
        x_BTD, cache = self.hidden(tokens_BT, positions_BT, segment_ids_BT, cache, layers)
        return self.logits(x_BTD), cache

    def layer_list(self) -> tuple[dict[str, jax.Array], ...]:
        """Each layer's parameters, sliced out of the stacked arrays. A decode loop slices them
        once before it starts and passes them as `layers=`: sliced inside the loop body, XLA
        copies every weight matrix at every token."""
        stacked = self.layers.arrays()
        return tuple({k: v[i] for k, v in stacked.items()} for i in range(self.cfg.num_layers))

    def hidden(self, tokens_BT, positions_BT, segment_ids_BT=None, cache: KVCache | None = None,
               layers=None):
        """Final-normed hidden states [B, T, D] and the updated cache. `layers`: this model's
        `layer_list()` (only used with a cache, whose layers run unrolled)."""
        cfg = self.cfg
        cdt = jnp.dtype(cfg.compute_dtype)
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones_like(tokens_BT)
        x_BTD = jnp.take(self.embed[...], tokens_BT, axis=0).astype(cdt)
        if cfg.gemma:
            x_BTD = x_BTD * jnp.asarray(math.sqrt(cfg.d_model), cdt)
        # (full, sliding, segment ids): the fused path's kernels take the ids themselves
        masks = (*_attention_masks(cfg, positions_BT, segment_ids_BT, cache), segment_ids_BT)
        ropes = _rope_tables(cfg, positions_BT)
        if cache is not None:
            x_BTD, new_kv = _run_cached_layers(cfg, layers or self.layer_list(), x_BTD, masks,
                                               ropes, cache)
        else:
            params = self.layers.arrays()
            key = getattr(self, "dropout_key", None)
            if key is not None and cfg.lora is not None and cfg.lora.dropout > 0:
                params["_dropout"] = jax.random.split(key[...], cfg.num_layers)
            x_BTD = _run_layers(cfg, params, x_BTD, masks, ropes)
        x_BTD = rms_norm(x_BTD, self.final_norm[...], cfg)
        if cache is not None:
            cache = _advance_cache(cache, new_kv, positions_BT, segment_ids_BT)
        return x_BTD, cache

    def reward(self, x_BTD):
        """Reward logits [B, T] (float32) of final hidden states: the score of the text up to
        and including each position."""
        w = self.reward_head[...].astype(jnp.float32)
        return x_BTD.astype(jnp.float32) @ w + self.reward_bias[...].astype(jnp.float32)[0]

    def logits(self, x_BTD):
        cfg = self.cfg
        w_DV = self.embed[...].T if cfg.tie_embeddings else self.lm_head[...]
        logits_BTV = _dense(x_BTD, w_DV.astype(x_BTD.dtype), out_dtype=jnp.float32)
        if cfg.final_softcap:
            logits_BTV = jnp.tanh(logits_BTV / cfg.final_softcap) * cfg.final_softcap
        return logits_BTV


# ----------------------------------------------------------------------------------------------
# Blocks


def _dense(x, w, n_in: int = 1, out_dtype=None):
    """Contract the last `n_in` axes of x with the first `n_in` of w, as one 2-D matmul.

    Flattening batch and time first matters on CPU: XLA lowers the weight gradient of a 3-D
    einsum (two contracted axes, `btd,btf->df`) about twice as slowly as a plain 2-D matmul.
    """
    lead, contract, rest = x.shape[:-n_in], w.shape[:n_in], w.shape[n_in:]
    y = jnp.dot(x.reshape(-1, math.prod(contract)), w.reshape(math.prod(contract), -1),
                preferred_element_type=out_dtype)
    return y.reshape(*lead, *rest)


def _project(cfg: ModelConfig, p, name: str, x, n_in: int = 1):
    """x times layer matrix `name` (dequantised if stored quantised), plus its adapter."""
    cdt = x.dtype
    if f"{name}_codes" in p:
        w = lora_lib.dequantize(p[f"{name}_codes"], p[f"{name}_scale"], cfg.lora.quant, cdt)
    else:
        w = p[name].astype(cdt)
    y = _dense(x, w, n_in)
    return y if cfg.lora is None else lora_lib.apply(cfg.lora, p, name, x, y, n_in, _dense)


def rms_norm(x, w, cfg: ModelConfig):
    """RMSNorm in float32; Gemma scales by (1 + w)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
    scale = (1.0 + w.astype(jnp.float32)) if cfg.gemma else w.astype(jnp.float32)
    return (y * scale).astype(x.dtype)


def _inv_freq(rope: RopeConfig, head_dim: int):
    inv = 1.0 / (rope.theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if rope.kind == "linear":
        return inv / rope.factor
    if rope.kind == "llama3":  # smooth interpolation between scaled low and unscaled high freqs
        low_wavelen = rope.original_max_position / rope.low_freq_factor
        high_wavelen = rope.original_max_position / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor)
        mid = (1 - smooth) * inv / rope.factor + smooth * inv
        return jnp.where(wavelen > low_wavelen, inv / rope.factor,
                         jnp.where(wavelen < high_wavelen, inv, mid))
    return inv


def _rope_tables(cfg: ModelConfig, positions_BT):
    """(cos, sin) [B, T, H/2] for the global rope and, for Gemma 3, the local one."""
    def table(rope):
        ang = positions_BT.astype(jnp.float32)[..., None] * _inv_freq(rope, cfg.head_dim)
        return jnp.cos(ang), jnp.sin(ang)
    glob = table(cfg.rope)
    return glob, (table(cfg.local_rope) if cfg.local_rope else glob)


def _apply_rope(x_BTNH, cos_BTh, sin_BTh):
    # HF's rotate_half layout: the first and second halves of each head form the pairs.
    x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    c, s = cos_BTh[:, :, None, :], sin_BTh[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_BTNH.dtype)


def _attention_masks(cfg: ModelConfig, positions_BT, segment_ids_BT, cache):
    """Boolean [B, T, S] masks (full, sliding) from segment ids, positions and slot order."""
    T = positions_BT.shape[1]
    if cache is None:
        k_seg, k_pos = segment_ids_BT, positions_BT
        q_slot = k_slot = jnp.arange(T)
    else:
        k_seg = _write_slots(cache.segment_ids_BS, segment_ids_BT, cache.index, 1)
        k_pos = _write_slots(cache.positions_BS, positions_BT, cache.index, 1)
    same = (segment_ids_BT[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
    if cache is None:
        full = same & (k_slot[None, None, :] <= q_slot[None, :, None])
    else:
        # With a cache, causality by position within a segment: positions grow along a
        # sequence, so this equals slot order for caches filled left to right, and it stays
        # right wherever a row's slots sit (the sampling engine writes each row at its own
        # index, after a prompt bucket whose slots before the prompt stay empty).
        full = same & (k_pos[:, None, :] <= positions_BT[:, :, None])
    if not cfg.sliding_window:
        return full, full
    near = (positions_BT[:, :, None] - k_pos[:, None, :]) < cfg.sliding_window
    return full, full & near


def _fused_implementation(dtype, head_dim: int) -> str | None:
    """cuDNN's flash attention on a GPU for the 16-bit dtypes and head sizes it takes, else
    XLA's (jax's default, also on GPUs). The mask already holds causality: is_causal only lets
    cuDNN skip the blocks above the diagonal."""
    if (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
            and head_dim % 8 == 0 and head_dim <= 256):
        return "cudnn"
    return None


def _splash(cfg: ModelConfig, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, sliding):
    """Splash attention (TPU) for a full or sliding layer; `sliding` may be traced (the layer
    scan), so the two kernels are the branches of a cond."""
    def run(window):
        return lambda: splash.attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, scale=cfg.scale,
                                        window=window)

    if not cfg.sliding_window:
        return run(0)()
    return jax.lax.cond(sliding, run(cfg.sliding_window), run(0))


def _attention(cfg: ModelConfig, p, x_BTD, mask_BTS, cos, sin, kv_cache, cache_index,
               segment_ids_BT=None, sliding=False):
    cdt = x_BTD.dtype
    B, T, _ = x_BTD.shape
    K, G, H = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
    q_BTNH = _project(cfg, p, "wq", x_BTD)
    k_BTKH = _project(cfg, p, "wk", x_BTD)
    v_BTKH = _project(cfg, p, "wv", x_BTD)
    if cfg.qkv_bias:
        q_BTNH += p["bq"].astype(cdt)
        k_BTKH += p["bk"].astype(cdt)
        v_BTKH += p["bv"].astype(cdt)
    if cfg.qk_norm:
        q_BTNH = rms_norm(q_BTNH, p["q_norm"], cfg)
        k_BTKH = rms_norm(k_BTKH, p["k_norm"], cfg)
    q_BTNH = _apply_rope(q_BTNH, cos, sin)
    k_BTKH = _apply_rope(k_BTKH, cos, sin)
    # Attention runs as batched matmuls over (batch, kv head) on [.., G*T, H] x [.., S, H]: only
    # the small q/k/v/output tensors are transposed, never the [B, K, G, T, S] scores (XLA CPU
    # spent ~1 s per training step copying scores between einsum layouts before).
    q_BKGTH = q_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)
    k_BKTH, v_BKTH = k_BTKH.transpose(0, 2, 1, 3), v_BTKH.transpose(0, 2, 1, 3)
    if kv_cache is None and cfg.attention == "fused":
        if splash.usable(T):  # TPU: Splash, which takes the segment ids itself
            o_BTNH = _splash(cfg, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, sliding)
        else:
            # The same masks: the packed segments and sliding windows are the boolean [B, T, S]
            # mask (cuDNN adds it as a bias). jax picks XLA's implementation unless told.
            impl = _fused_implementation(cdt, H)
            o_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, mask=mask_BTS[:, None],
                                                  scale=cfg.scale, implementation=impl,
                                                  is_causal=impl == "cudnn")
        out_BTD = _project(cfg, p, "wo", o_BTNH, n_in=2)
        return (out_BTD + p["bo"].astype(cdt) if cfg.o_bias else out_BTD), None
    if kv_cache is None:
        new_kv = None
        # Causal attention by blocks of queries: block i sees only the keys up to its own end,
        # so the all-masked blocks above the diagonal are never computed (forward + backward of
        # one layer's attention, 4 x 512 tokens on the CPU: ~150 -> ~85 ms with blocks of 128).
        n = T // Q_BLOCK if T % Q_BLOCK == 0 else 1
        C = T // n
        o_BKGTH = jnp.concatenate([
            _attend(cfg, q_BKGTH[:, :, :, i * C:(i + 1) * C], k_BKTH[:, :, :(i + 1) * C],
                    v_BKTH[:, :, :(i + 1) * C], mask_BTS[:, i * C:(i + 1) * C, :(i + 1) * C])
            for i in range(n)], axis=3)
    else:  # every slot of the cache, with this step's keys written in place (KVCache layout)
        k_buf, v_buf = kv_cache
        k_BKHT = k_BKTH.transpose(0, 1, 3, 2).astype(k_buf.dtype)
        new_kv = (_write_slots(k_buf, k_BKHT, cache_index, 3),
                  _write_slots(v_buf, v_BKTH.astype(v_buf.dtype), cache_index, 2))
        o_BKGTH = _attend(cfg, q_BKGTH, new_kv[0].astype(cdt), new_kv[1].astype(cdt), mask_BTS,
                          keys_transposed=True)
    o_BTKGH = o_BKGTH.transpose(0, 3, 1, 2, 4)
    out_BTD = _project(cfg, p, "wo", o_BTKGH.reshape(B, T, K * G, H), n_in=2)
    if cfg.o_bias:
        out_BTD += p["bo"].astype(cdt)
    return out_BTD, new_kv


def _attend(cfg: ModelConfig, q_BKGTH, keys, values_BKSH, mask_BTS, keys_transposed=False):
    """softmax(q k / sqrt(H)) v over the unmasked slots; keys [B, K, S, H] or, transposed,
    [B, K, H, S] (the KVCache layout)."""
    s_BKGTS = jnp.einsum("bkgth,bkhs->bkgts" if keys_transposed else "bkgth,bksh->bkgts",
                         q_BKGTH, keys, preferred_element_type=jnp.float32) * cfg.scale
    if cfg.attn_softcap:
        s_BKGTS = jnp.tanh(s_BKGTS / cfg.attn_softcap) * cfg.attn_softcap
    s_BKGTS = jnp.where(mask_BTS[:, None, None], s_BKGTS, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(s_BKGTS, axis=-1).astype(q_BKGTH.dtype)
    return jnp.einsum("bkgts,bksh->bkgth", probs, values_BKSH)


def _mlp(cfg: ModelConfig, p, x_BTD):
    cdt = x_BTD.dtype
    gate_BTF = _project(cfg, p, "w_gate", x_BTD)
    up_BTF = _project(cfg, p, "w_up", x_BTD)
    if cfg.mlp_bias:
        gate_BTF += p["b_gate"].astype(cdt)
        up_BTF += p["b_up"].astype(cdt)
    act = jax.nn.silu(gate_BTF) if cfg.act == "silu" else jax.nn.gelu(gate_BTF, approximate=True)
    out_BTD = _project(cfg, p, "w_down", act * up_BTF)
    if cfg.mlp_bias:
        out_BTD += p["b_down"].astype(cdt)
    return out_BTD


def _block(cfg: ModelConfig, p, x_BTD, sliding, masks, ropes, kv_cache, cache_index):
    mask = jnp.where(sliding, masks[1], masks[0]) if cfg.sliding_window else masks[0]
    cos = jnp.where(sliding, ropes[1][0], ropes[0][0])
    sin = jnp.where(sliding, ropes[1][1], ropes[0][1])
    h_BTD, new_kv = _attention(cfg, p, rms_norm(x_BTD, p["attn_norm"], cfg), mask, cos, sin,
                               kv_cache, cache_index, masks[2], sliding)
    if cfg.gemma:
        h_BTD = rms_norm(h_BTD, p["post_attn_norm"], cfg)
    x_BTD = x_BTD + h_BTD
    h_BTD = _mlp(cfg, p, rms_norm(x_BTD, p["mlp_norm"], cfg))
    if cfg.gemma:
        h_BTD = rms_norm(h_BTD, p["post_mlp_norm"], cfg)
    return x_BTD + h_BTD, new_kv


def _run_layers(cfg: ModelConfig, params, x_BTD, masks, ropes):
    """All blocks under one `lax.scan` over the stacked parameters (no cache)."""
    def body(x, xs):
        p, sliding = xs
        return _block(cfg, p, x, sliding, masks, ropes, None, None)[0], None

    # remat: keep only each layer's input. Otherwise keep the weight matmuls' outputs but
    # recompute attention scores and softmax in the backward pass: storing the stacked
    # [L, B, K, G, T, S] probabilities cost more memory traffic than recomputing them (training
    # step 10.1 -> 8.2 s for SmolLM2 at 4 x 512 tokens on the 2-core CPU).
    policy = (jax.checkpoint_policies.nothing_saveable if cfg.remat
              else jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    body = jax.checkpoint(body, policy=policy)
    return jax.lax.scan(body, x_BTD, (params, jnp.asarray(cfg.is_sliding)))[0]


def _run_cached_layers(cfg: ModelConfig, layers, x_BTD, masks, ropes, cache: KVCache):
    """The blocks unrolled, each reading and writing its own cache buffer in place (KVCache)."""
    new_k, new_v = [], []
    for i, p in enumerate(layers):
        x_BTD, (k, v) = _block(cfg, p, x_BTD, cfg.is_sliding[i], masks, ropes,
                               (cache.k_BKHS[i], cache.v_BKSH[i]), cache.index)
        new_k.append(k)
        new_v.append(v)
    return x_BTD, (tuple(new_k), tuple(new_v))


def _write_slots(buf, new, index, axis: int):
    """`buf` with `new` written along `axis` (the slots) from `index`: a scalar, the same slot
    for every row (one dynamic_update_slice), or [B], each row its own (a scatter)."""
    def put(b, n, i):
        return jax.lax.dynamic_update_slice_in_dim(b, n, i, axis - (b.ndim < buf.ndim))

    return put(buf, new, index) if jnp.ndim(index) == 0 else jax.vmap(put)(buf, new, index)


def _advance_cache(cache: KVCache, new_kv, positions_BT, segment_ids_BT) -> KVCache:
    T = positions_BT.shape[1]
    return KVCache(new_kv[0], new_kv[1],
                   _write_slots(cache.segment_ids_BS, segment_ids_BT.astype(jnp.int32),
                                cache.index, 1),
                   _write_slots(cache.positions_BS, positions_BT.astype(jnp.int32), cache.index, 1),
                   cache.index + T)


def create(cfg: ModelConfig, seed: int = 0) -> Decoder:
    """A randomly initialised decoder (weights come from `cotjax.weights` for real models)."""
    return Decoder(cfg, nnx.Rngs(params=seed))


def abstract(cfg: ModelConfig) -> Decoder:
    """The decoder's structure with ShapeDtypeStructs instead of arrays (no memory)."""
    return nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(params=0)))
