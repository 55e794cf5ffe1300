"""GGUF files: llama.cpp metadata -> a HF config dict, dequantised HF-named tensors, and the
cache that keeps each file's conversion (and its tokenizer, for weights.load_tokenizer), since
gguf-py reads slowly. No JAX."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """Where cotjax keeps files it builds once (the assembled Gemma GGUF, GGUF conversions)."""
    if os.environ.get("COTJAX_CACHE"):
        return Path(os.environ["COTJAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cotjax"


# ----------------------------------------------------------------------------------------------
# GGUF: llama.cpp names and metadata -> HF names and config.json keys.

_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GGUF_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                      "output": "lm_head"}
_GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}


def gguf_reader(path: str):
    import gguf

    size = os.path.getsize(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader fails in many ways on a damaged file
        raise ValueError(f"GGUF file {path} cannot be read (truncated or corrupt?): {e}") from e
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ValueError(f"GGUF file {path} is truncated: tensor {t.name!r} runs past the end")
    return reader


def _gguf_field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_hf_config(reader, path: str) -> dict:
    """The HF config.json dict described by a GGUF file's metadata."""
    arch = _gguf_field(reader, "general.architecture")
    if arch not in _GGUF_ARCHS:
        raise ValueError(f"GGUF file {path}: unsupported architecture {arch!r}; "
                         f"supported: {sorted(_GGUF_ARCHS)}")
    g = lambda k, d=None: _gguf_field(reader, f"{arch}.{k}", d)  # noqa: E731
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ValueError(f"GGUF file {path}: rope frequency tensors (llama3 rope scaling) are not "
                         "supported; load the HF safetensors checkpoint instead")
    n_heads = g("attention.head_count")
    hf = {
        "model_type": _GGUF_ARCHS[arch],
        "num_hidden_layers": g("block_count"),
        "hidden_size": g("embedding_length"),
        "intermediate_size": g("feed_forward_length"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": g("attention.head_count_kv", n_heads),
        "head_dim": g("attention.key_length", g("embedding_length") // n_heads),
        "rms_norm_eps": g("attention.layer_norm_rms_epsilon"),
        "rope_theta": g("rope.freq_base", 10000.0),
        "max_position_embeddings": g("context_length"),
        "vocab_size": g("vocab_size") or len(_gguf_field(reader, "tokenizer.ggml.tokens")),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _gguf_field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _gguf_field(reader, "tokenizer.ggml.padding_token_id"),
    }
    if arch == "qwen2":
        hf["attention_bias"] = True
    if arch == "gemma3":  # llama.cpp keeps only the window; the rest are Gemma 3's fixed values
        hf.update(sliding_window=g("attention.sliding_window"), sliding_window_pattern=6,
                  rope_local_base_freq=10000.0, query_pre_attn_scalar=256)
    return hf


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k projection rows (interleaved rope -> HF halves)."""
    rows = w.shape[0]
    return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


# Reading a GGUF file is slow in gguf-py (Gemma 3 270M: 11-19 s to parse 262k vocabulary strings,
# 11 s to dequantise), so each file's conversion is kept in the cache and read back in a second.
MAX_CACHED_GB = 4.0  # float32 weights above this (COTJAX_GGUF_CACHE_MAX_GB) are not kept
UNUSED_DAYS = 14.0  # entries not read for this long (COTJAX_GGUF_CACHE_DAYS) go at the next save


@functools.cache  # read and hashed once per process, not at every load
def _versions() -> str:
    """What a conversion depends on besides the file: this module's source (any edit makes new
    entries), and the gguf and transformers releases that read and tokenize."""
    from importlib.metadata import version

    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"{code}|gguf {version('gguf')}|transformers {version('transformers')}"


def cache_entry(path: str, kind: str) -> Path | None:
    """The cache directory of a GGUF file's converted `kind`, keyed by the file's real path,
    inode, size and mtime (a replaced file gets a new entry) and `_versions()`; None when
    COTJAX_GGUF_CACHE=0."""
    if os.environ.get("COTJAX_GGUF_CACHE", "1") == "0":
        return None
    st = os.stat(path)
    key = f"{os.path.realpath(path)}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{_versions()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{Path(path).stem}-{digest}" / kind


def through_cache(path: str, kind: str, convert, save, load):
    """load(entry) if the entry exists, else convert(), save(value, dir) into a fresh temporary
    dir and rename it into place: a killed save leaves only that dir, a racing process's entry
    wins. A damaged entry is moved aside and converted again; a cache that cannot be written or
    read back costs speed, not the run (one line on stderr says why)."""
    entry = cache_entry(path, kind)
    if entry is not None and entry.is_dir():
        try:
            value = load(entry)
            _mark_used(entry.parent)
            return value
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 (truncated file, stale format, ...)
            print(f"cached {kind} of {path} in {entry} is unreadable ({e}); converting again",
                  file=sys.stderr)
            _discard(entry)
    value = convert()
    if entry is None:
        return value
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        for old in entry.parent.glob(f"{kind}.tmp-*"):  # left by killed saves over an hour ago
            if time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f"{kind}.tmp-"))
        save(value, tmp)
        os.rename(tmp, entry)
        _prune_unused(keep=entry.parent)
    except Exception as e:  # noqa: BLE001 (lost the race to another process, or cannot write)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not entry.is_dir():
            print(f"{kind} of {path} not cached in {entry}: {e}", file=sys.stderr)
            return value
    try:  # read back, as a later run gets it
        return load(entry)
    except Exception as e:  # noqa: BLE001 (a format that does not read back: never keep it)
        print(f"cached {kind} of {path} does not read back ({e}); not cached", file=sys.stderr)
        _discard(entry)
        return value


def _mark_used(file_dir: Path) -> None:
    """A file's entries dir's mtime is its last use, which `_prune_unused` reads."""
    try:
        os.utime(file_dir)
    except OSError:
        pass  # a read-only cache is still a cache


def _prune_unused(keep: Path) -> None:
    """Remove the entries of files not read for COTJAX_GGUF_CACHE_DAYS: a new release or a
    replaced GGUF file leaves its old conversion behind (0.5-1.1 GB each), and this runs only
    when a new entry is written, so a cache read costs nothing more. One line says what went."""
    days = float(os.environ.get("COTJAX_GGUF_CACHE_DAYS", UNUSED_DAYS))
    gone, size, cutoff = 0, 0, time.time() - days * 86400
    for d in keep.parent.iterdir():  # also the dirs that killed deletions left
        try:
            if d == keep or not d.is_dir() or d.stat().st_mtime >= cutoff:
                continue
            size += sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        except OSError:
            continue  # another process removed it first
        _discard(d)
        gone += 1
    if gone:
        print(f"removed {gone} cached GGUF conversion(s) unread for over {days:g} days "
              f"({size / 2**30:.1f} GB) from {keep.parent}", file=sys.stderr)


def _discard(entry: Path) -> None:
    """Move an entry aside before deleting it, so a process reading it never sees half of it."""
    aside = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f"{entry.name}.tmp-"))
    try:
        os.rename(entry, aside / "old")
    except OSError:
        pass  # gone already
    shutil.rmtree(aside, ignore_errors=True)


def _save_converted(value, d: Path) -> None:
    from safetensors.numpy import save_file

    gb = sum(t.nbytes for t in value[1].values()) / 2**30
    limit = float(os.environ.get("COTJAX_GGUF_CACHE_MAX_GB", MAX_CACHED_GB))
    if gb > limit:
        raise ValueError(f"{gb:.1f} GB of float32 weights is over COTJAX_GGUF_CACHE_MAX_GB={limit}")
    (d / "config.json").write_text(json.dumps(value[0]))
    save_file(value[1], str(d / "model.safetensors"))


def _load_converted(d: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    return json.loads((d / "config.json").read_text()), load_file(str(d / "model.safetensors"))


def read_gguf_config(path: str) -> dict:
    """The HF config dict of a GGUF file: its cached conversion's when there is one (a second
    where parsing the metadata takes 11-19 s for Gemma), else from the metadata."""
    entry = cache_entry(path, "weights")
    if entry is not None:
        try:
            return json.loads((entry / "config.json").read_text())
        except (OSError, ValueError):  # no entry yet, or a damaged one
            pass
    return gguf_hf_config(gguf_reader(path), path)


def read_gguf(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF config dict, HF-named float32 tensors) from a GGUF file, dequantised with numpy
    (through the cache: `through_cache`)."""
    return through_cache(path, "weights", lambda: _convert_gguf(path), _save_converted,
                          _load_converted)


def _convert_gguf(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    import gguf

    reader = gguf_reader(path)
    hf = gguf_hf_config(reader, path)
    tensors = {}
    for t in reader.tensors:
        base, _, kind = t.name.rpartition(".")
        parts = base.split(".")
        if parts[0] == "blk":
            if parts[2] not in _GGUF_LAYER_NAMES:
                raise ValueError(f"GGUF file {path}: unknown tensor {t.name!r}")
            name = f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}.{kind}"
            if hf["model_type"] == "gemma3_text" and parts[2] == "ffn_norm":
                name = f"model.layers.{parts[1]}.pre_feedforward_layernorm.{kind}"
        elif base in _GGUF_GLOBAL_NAMES:
            name = f"{_GGUF_GLOBAL_NAMES[base]}.{kind}"
        else:
            raise ValueError(f"GGUF file {path}: unknown tensor {t.name!r}")
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if hf["model_type"] == "llama" and parts[-1] in ("attn_q", "attn_k"):
            heads = hf["num_attention_heads" if parts[-1] == "attn_q" else "num_key_value_heads"]
            w = _unpermute_rope_rows(w, heads)
        if hf["model_type"] == "gemma3_text" and base.endswith("norm"):
            w = w - 1.0  # llama.cpp stores Gemma's (1 + w) norm scales with the 1 added
        tensors[name] = w
    return hf, tensors
