"""LoRA and QLoRA: low-rank adapters on a frozen (optionally quantised) base decoder.

A projection W of a decoder layer becomes

    y = x W + (alpha / rank) * dropout(x) A B        A: [in, rank], B: [rank, out], B = 0 at init

so a fresh adapter changes nothing. The base stays frozen: in its own dtype, or quantised
blockwise along its output (QLoRA): `int8` (absmax, 127 levels a side) or `nf4` (the 16
NormalFloat levels of Dettmers et al. 2023, two codes per byte). Only the adapters (and a reward
head, which a reward model must learn) are trained, checkpointed and given optimizer state.

Why not qwix: qwix rewrites the matmuls of flax modules (nnx.Linear, nnx.Einsum) that it finds by
module path, while cotjax's decoder stacks every layer's weights on a leading axis and runs them
under one `lax.scan` through plain `jnp.dot` (cotjax.model), so there is no per-layer module for
qwix to intercept. The adapters here are ordinary stacked parameters with logical axis names that
shard by the same rules table (the rank axis is replicated).

The base's identity is a sha256 of its frozen arrays (`fingerprint`): a run's adapters are only
ever put back on the base they were trained on. Pure numpy except `dequantize` and `apply`,
which run inside the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from cotjax.sharding import host_array

QUANTS = ("none", "int8", "nf4")
# The layer matrices an adapter may sit on (cotjax.model's names) and their input axes count.
MATRICES = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_gate": 1, "w_up": 1, "w_down": 1}
# NF4: quantiles of N(0, 1) scaled to [-1, 1], with an exact zero (QLoRA, appendix E).
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)
# The worst round-off of each quantiser as a fraction of its block's absmax: half the widest gap
# between neighbouring levels.
MAX_ERROR = {"int8": 0.5 / 127, "nf4": float(np.max(np.diff(NF4))) / 2}
ADAPTER = re.compile(r"_lora_[ab]$")
TRAINED_WITH_ADAPTERS = ("reward_head", "reward_bias")  # a new head has no pretrained value


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """The adapters of a model: rank, alpha, dropout, which layer matrices, and the base's
    quantisation (none | int8 | nf4, blocks of `block` along each matrix's output)."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float = 0.0
    quant: str = "none"
    block: int = 64

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.quant not in QUANTS:
            raise ValueError(f"lora.quant must be one of {QUANTS}, got {self.quant!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        bad = sorted(set(self.targets) - set(MATRICES))
        if bad or not self.targets:
            raise ValueError(f"lora targets {list(self.targets)}: each must be one of "
                             f"{sorted(MATRICES)}")
        if self.quant != "none" and (self.block < 2 or self.block % 2):
            raise ValueError(f"lora.block must be an even number >= 2, got {self.block}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, section) -> LoraSpec | None:
        """The `lora` section of a run config; None when rank is 0 (full fine-tuning)."""
        if section is None or int(section.get("rank", 0)) == 0:
            return None
        pattern = str(section.targets)
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"lora.targets={pattern!r} is not a regular expression: {e}") from e
        targets = tuple(n for n in MATRICES if regex.search(f"layers/{n}"))
        if not targets:
            raise ValueError(f"lora.targets={pattern!r} matches none of the layer matrices "
                             f"{['layers/' + n for n in MATRICES]}")
        return cls(rank=int(section.rank), alpha=float(section.get("alpha", 16.0)),
                   targets=targets, dropout=float(section.get("dropout", 0.0)),
                   quant=str(section.get("quant", "none")), block=int(section.get("block", 64)))

    @classmethod
    def from_dict(cls, d: dict) -> LoraSpec:
        return cls(**{**d, "targets": tuple(d["targets"])})


def quantized(spec: LoraSpec | None, name: str) -> bool:
    """Whether a layer matrix is stored quantised (QLoRA quantises every one, adapted or not)."""
    return spec is not None and spec.quant != "none" and name in MATRICES


def adapter_shapes(name: str, shape: tuple[int, ...], axes: tuple[str, ...], rank: int):
    """Per-layer ((A shape, A axes), (B shape, B axes)) of a matrix of `shape` / `axes`."""
    n_in = MATRICES[name]
    return ((*shape[:n_in], rank), (*axes[:n_in], "lora_rank")), \
           ((rank, *shape[n_in:]), ("lora_rank", *axes[n_in:]))


def storage_shapes(spec: LoraSpec, name: str, shape: tuple[int, ...]):
    """(codes shape and dtype, scales shape) of quantised layer matrix `name` of `shape`: blocks
    run along its output (row-major over its output axes), one scale each."""
    n_in = MATRICES[name]
    out = int(np.prod(shape[n_in:]))
    if out % spec.block:
        raise ValueError(f"layers/{name} of shape {shape}: its output size ({out}) is not a "
                         f"multiple of lora.block={spec.block}; set lora.block to a divisor of it")
    if spec.quant == "nf4" and shape[-1] % 2:
        raise ValueError(f"layers/{name} of shape {shape}: nf4 packs two codes a byte along the "
                         "last axis, which is odd here; use lora.quant=int8")
    codes = (*shape[:-1], shape[-1] // 2) if spec.quant == "nf4" else shape
    dtype = np.uint8 if spec.quant == "nf4" else np.int8
    return codes, dtype, (*shape[:n_in], out // spec.block)


# ----------------------------------------------------------------------------------------------
# Quantisation (numpy at load time; `dequantize` also runs under jit inside the model)


def quantize(w: np.ndarray, quant: str, block: int, n_lead: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, float32 scales) of `w`, in blocks of `block` along its trailing axes after the
    first `n_lead` (flattened row-major)."""
    w = np.asarray(w, np.float32)
    blocks = w.reshape(*w.shape[:n_lead], -1, block)
    absmax = np.max(np.abs(blocks), axis=-1)
    safe = np.where(absmax > 0, absmax, 1.0)[..., None]
    if quant == "int8":
        codes = np.clip(np.rint(blocks / safe * 127), -127, 127).astype(np.int8)
        return codes.reshape(w.shape), absmax.astype(np.float32)
    mids = (NF4[1:] + NF4[:-1]) / 2  # nearest level by midpoints: no [.., 16] temporary
    idx = np.searchsorted(mids, blocks / safe).astype(np.uint8).reshape(w.shape)
    return (idx[..., 0::2] | (idx[..., 1::2] << 4)).astype(np.uint8), absmax.astype(np.float32)


def dequantize(codes, scales, quant: str, dtype=jnp.float32, xp=jnp):
    """The float matrix of (codes, scales); `xp`: jax.numpy (in the model) or numpy (merging on
    the host, where a stacked 12B matrix would not fit an accelerator's temporaries)."""
    if quant == "nf4":
        lo, hi = codes & 0xF, codes >> 4
        idx = xp.stack([lo, hi], axis=-1).reshape(*codes.shape[:-1], codes.shape[-1] * 2)
        vals = xp.asarray(NF4)[idx.astype(xp.int32)]
    else:
        vals = codes.astype(xp.float32) / 127.0
    blocks = vals.reshape(*scales.shape, -1)  # the blocks `quantize` made
    return (blocks * scales[..., None].astype(xp.float32)).reshape(vals.shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Inside the model


def apply(spec: LoraSpec, p: dict, name: str, x, y, n_in: int, dense):
    """y plus the adapter of matrix `name` (if it has one) applied to x; `dense(x, w, n_in)` is
    the model's matmul. `p["_dropout"]`, when present, is this layer's dropout key."""
    if f"{name}_lora_a" not in p:
        return y
    cdt = x.dtype
    if spec.dropout > 0 and "_dropout" in p:
        key = jax.random.fold_in(p["_dropout"], list(MATRICES).index(name))
        keep = jax.random.bernoulli(key, 1.0 - spec.dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - spec.dropout), 0).astype(cdt)
    h = dense(x, p[f"{name}_lora_a"].astype(cdt), n_in)
    return y + (spec.scale * dense(h, p[f"{name}_lora_b"].astype(cdt))).astype(y.dtype)


# ----------------------------------------------------------------------------------------------
# Parameter trees: base <-> adapted, trained vs frozen, merge


def adapt_base(params: dict[str, np.ndarray], spec: LoraSpec, seed: int) -> dict[str, np.ndarray]:
    """A base model's flat params ('layers/wq', ...) with the base matrices quantised (if the
    spec says so) and fresh adapters: A uniform in +-1/sqrt(fan_in) (PEFT's kaiming init),
    B zero."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, w in params.items():
        name = key.removeprefix("layers/")
        if not key.startswith("layers/") or name not in MATRICES:
            out[key] = w
            continue
        if quantized(spec, name):
            storage_shapes(spec, name, w.shape[1:])  # a clear error for an indivisible output
            out[f"{key}_codes"], out[f"{key}_scale"] = quantize(w, spec.quant, spec.block,
                                                                1 + MATRICES[name])
        else:
            out[key] = w
        if name in spec.targets:
            n_in = MATRICES[name]
            L, fan_in = w.shape[0], int(np.prod(w.shape[1:1 + n_in]))
            bound = 1.0 / np.sqrt(fan_in)
            out[f"{key}_lora_a"] = rng.uniform(-bound, bound, (*w.shape[:1 + n_in], spec.rank)
                                               ).astype(np.float32)
            out[f"{key}_lora_b"] = np.zeros((L, spec.rank, *w.shape[1 + n_in:]), np.float32)
    return out


def is_trained(key: str, spec: LoraSpec | None) -> bool:
    """Whether a flat parameter key is trained: everything without adapters; with them, the
    adapters and a reward head."""
    if spec is None:
        return True
    return bool(ADAPTER.search(key)) or key.split("/")[-1] in TRAINED_WITH_ADAPTERS


def split(tree: dict, spec: LoraSpec | None, prefix: str = "") -> tuple[dict, dict]:
    """(trained, frozen) nested dicts of a nested parameter dict (or of its shapes)."""
    trained, frozen = {}, {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            t, f = split(v, spec, f"{key}/")
            if t:
                trained[k] = t
            if f:
                frozen[k] = f
        else:
            (trained if is_trained(key, spec) else frozen)[k] = v
    return trained, frozen


def join(frozen: dict | None, trained: dict) -> dict:
    """The whole nested parameter dict again (the inverse of `split`)."""
    if not frozen:
        return trained
    out = dict(frozen)
    for k, v in trained.items():
        out[k] = join(out[k], v) if isinstance(v, dict) and k in out else v
    return out


def fingerprint(frozen: dict) -> str:
    """sha256 of a frozen parameter tree: its keys, dtypes, shapes and bytes, in key order."""
    h = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(frozen)[0]
    for path, leaf in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0])):
        arr = host_array(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def merged_params(params: dict[str, np.ndarray], spec: LoraSpec, dtype) -> dict[str, np.ndarray]:
    """Flat params of the plain model the adapters describe: W (dequantised) + scale * A B."""
    out = {}
    for key, v in params.items():
        if ADAPTER.search(key) or key.endswith("_scale") and f"{key[:-6]}_codes" in params:
            continue
        if key.endswith("_codes"):
            base = key[:-6]
            scales = params[f"{base}_scale"]  # one layer at a time, in numpy
            v = np.stack([dequantize(c, s, spec.quant, np.float32, np) for c, s in zip(v, scales)])
            key = base
        if f"{key}_lora_a" in params:
            v = np.asarray(v, np.float32) + spec.scale * _product(
                params[f"{key}_lora_a"], params[f"{key}_lora_b"])
        out[key] = np.asarray(v).astype(dtype)
    return out


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per layer A @ B for stacked adapters a [L, *in, r], b [L, r, *out] -> [L, *in, *out]."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    L, r = a.shape[0], a.shape[-1]
    prod = a.reshape(L, -1, r) @ b.reshape(L, r, -1)
    return prod.reshape(*a.shape[:-1], *b.shape[2:])
