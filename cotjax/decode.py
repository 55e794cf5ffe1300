"""Batched generation: a jitted prefill plus a KV-cache `lax.while_loop`, greedy or sampled.

How a batch is laid out. Prompts are LEFT-padded to a bucketed length P (segment id 0 on the
padding, positions 0.. on the real tokens of each row), so every row's last prompt token sits in
the same column and each decode step writes one cache slot for all rows (position = previous + 1,
segment id 1). The cache has P + max_new_tokens slots. Rows finish independently (per-row `done`
flags: an EOS id was emitted, or a stop string was found on the host); the loop ends when every
row is done or `max_new_tokens` tokens were produced.

Compilation. `generate` sorts the prompts by length, cuts them into batches of `batch_size` rows
(a short last batch is padded with empty rows) and rounds each batch's longest prompt up to a
bucket (`bucket_length`: powers of two from 16, then multiples of 256). The jitted functions are
specialised on (batch_size, bucket, max_new_tokens, sampling, eos ids) only, so prompts of any
length inside one bucket reuse one compiled program (`TRACE_COUNTS` counts traces for tests).

Sampling. Each prompt gets its own PRNG key, `fold_in(key(seed), prompt index)`, and step t
draws with `fold_in(row key, t)`; a sampled continuation therefore depends only on the seed, the
prompt's index and the prompt, never on how the prompts were batched. Temperature 0 is greedy
(argmax); top-k keeps the k largest logits (ties with the k-th included), top-p the smallest
prefix of the sorted distribution whose mass reaches p (the most likely token always stays).

Stop strings are checked on the host: with stop strings the loop runs in chunks of `check_every`
tokens, and after each chunk the rows whose decoded text holds a stop string are marked done; the
text helpers cut the text at the first stop string. EOS ids stop rows inside the loop.

Data parallelism. With a `mesh`, the batch axis is sharded over the mesh axes other than
`tensor` (the parameters are replicated unless they already live on the mesh), so each device
decodes batch_size / n_devices rows.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec as P

from cotjax.model import KVCache

# Prompt columns per prefill pass (bucket_length makes every longer bucket a multiple of it).
PREFILL_CHUNK = 256

# Times each jitted function was traced, keyed by name (compilation-count tests read it).
TRACE_COUNTS: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0: greedy. top_k 0: off. top_p 1.0: off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingConfig()


def bucket_length(n: int, minimum: int = 16) -> int:
    """The padded prompt length for a prompt of n tokens: powers of two, then multiples of 256."""
    if n <= 256:
        return max(minimum, 1 << max(0, n - 1).bit_length())
    return -(-n // 256) * 256


# ----------------------------------------------------------------------------------------------
# Sampling


def filter_logits(logits_BV: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """Temperature-scaled logits with the tokens outside top-k / top-p set to -inf."""
    logits_BV = logits_BV.astype(jnp.float32) / sampling.temperature
    neg_inf = jnp.array(-jnp.inf, jnp.float32)
    V = logits_BV.shape[-1]
    k = sampling.top_k if 0 < sampling.top_k < V else 0
    if k == 0 and sampling.top_p >= 1.0:
        return logits_BV
    if k:
        sorted_BK = jax.lax.top_k(logits_BV, k)[0]  # descending
    else:
        sorted_BK = -jnp.sort(-logits_BV, axis=-1)
    threshold_B1 = sorted_BK[:, -1:]
    if sampling.top_p < 1.0:
        probs_BK = jax.nn.softmax(sorted_BK, axis=-1)
        # Keep a token when the mass strictly before it is below p (the first always stays).
        before_BK = jnp.cumsum(probs_BK, axis=-1) - probs_BK
        kept = jnp.sum(before_BK < sampling.top_p, axis=-1, keepdims=True)
        threshold_B1 = jnp.take_along_axis(sorted_BK, kept - 1, axis=-1)
    return jnp.where(logits_BV < threshold_B1, neg_inf, logits_BV)


def argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, -1)` (first index of the maximum) as two plain reductions: XLA CPU runs
    them vectorised, the variadic reduce of argmax not (64 x 49152 logits: 2.7 vs 8.0 ms)."""
    V = x.shape[-1]
    first = jnp.min(jnp.where(x == jnp.max(x, axis=-1, keepdims=True), jnp.arange(V), V), axis=-1)
    return jnp.minimum(first, V - 1).astype(jnp.int32)  # V - 1, not V, for an all-NaN row


def sample_tokens(logits_BV: jax.Array, keys_B: jax.Array, step, sampling: SamplingConfig) -> jax.Array:
    """One token per row: argmax when greedy, else a draw with `fold_in(row key, step)`; `step`
    is one number or one per row (the engine's rows are at different tokens of their samples)."""
    if sampling.greedy:
        return argmax(logits_BV)
    probs_BV = jax.nn.softmax(filter_logits(logits_BV, sampling), axis=-1)  # filtered: 0
    step_B = jnp.broadcast_to(jnp.asarray(step, jnp.uint32), keys_B.shape[:1])
    step_keys = jax.vmap(jax.random.fold_in)(keys_B, step_B)
    # Inverse CDF with one uniform per row: the first token whose cumulative mass exceeds u.
    # jax.random.categorical draws a Gumbel per vocabulary entry instead (64 x 49152 of them:
    # 109 vs 22 ms a step on the 2-core CPU). A zero-mass token is never the first to exceed u.
    cdf_BV = jnp.cumsum(probs_BV, axis=-1)
    u_B = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(step_keys) * cdf_BV[:, -1]
    first = jnp.sum(cdf_BV <= u_B[:, None], axis=-1)
    # u rounding up to the total mass would run past the end: the last token with mass, then
    last = jnp.max(jnp.where(probs_BV > 0, jnp.arange(probs_BV.shape[-1]), 0), axis=-1)
    return jnp.minimum(first, last).astype(jnp.int32)


def sample_keys(seed: int, problems: Sequence[int], samples: Sequence[int]) -> jax.Array:
    """The key of each (problem, sample) pair: `fold_in(fold_in(key(seed), problem), sample)`.
    A sample's tokens then depend only on the seed, its problem index, its sample index and its
    prompt, never on batching, devices, arrival order or where a run resumed."""
    base = jax.random.key(seed)
    return _pair_keys(base, jnp.asarray(problems, jnp.uint32), jnp.asarray(samples, jnp.uint32))


@jax.jit
def _pair_keys(base, problems, samples):
    return jax.vmap(lambda p, s: jax.random.fold_in(jax.random.fold_in(base, p), s))(problems, samples)


_sample_jit = jax.jit(sample_tokens, static_argnames=("sampling",))  # tests, one-off draws


# ----------------------------------------------------------------------------------------------
# The jitted prefill and generation loop


@struct.dataclass
class _Carry:
    cache: KVCache
    out_BN: jax.Array  # generated tokens; -1 after a row is done
    tok_B: jax.Array  # the last generated token (-1 for done rows)
    pos_B: jax.Array  # position of tok_B
    done_B: jax.Array
    keys_B: jax.Array
    step: jax.Array  # tokens generated so far (int32 scalar)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything the compiled programs are specialised on besides the array shapes."""

    max_new_tokens: int
    sampling: SamplingConfig
    eos_ids: tuple[int, ...]
    mesh: jax.sharding.Mesh | None
    batch_axes: tuple[str, ...]


def _constrain(x, spec: _Spec, batch_dim: int):
    if spec.mesh is None:
        return x
    parts = [None] * x.ndim
    parts[batch_dim] = spec.batch_axes
    return jax.lax.with_sharding_constraint(x, NamedSharding(spec.mesh, P(*parts)))


def _is_eos(tok_B, eos_ids):
    if not eos_ids:
        return jnp.zeros(tok_B.shape, bool)
    return jnp.isin(tok_B, jnp.asarray(eos_ids, jnp.int32))


def prefill_cache(model, layers, tokens_BP, lengths_B) -> tuple[KVCache, jax.Array]:
    """(cache of exactly P slots, last column's hidden state [B, D]) of left-padded prompts.

    No attention over empty generation slots. The prompt goes in PREFILL_CHUNK columns at a
    time: the attention scores of one pass are [B, heads, chunk, P] rather than [B, heads, P, P]
    (64 8-shot prompts of 1280 tokens needed 20 GB in one pass)."""
    B, Pn = tokens_BP.shape
    start_B1 = (Pn - lengths_B)[:, None]
    col_P = jnp.arange(Pn)[None]
    segment_ids_BP = (col_P >= start_B1).astype(jnp.int32)
    positions_BP = jnp.maximum(col_P - start_B1, 0).astype(jnp.int32)
    chunk = min(Pn, PREFILL_CHUNK)
    assert Pn % chunk == 0, f"prompt length {Pn} is not a bucket (bucket_length)"

    def prefill_chunk(cache, cols):
        x_BCD, cache = model.hidden(*cols, cache, layers)
        return cache, x_BCD[:, -1]

    def chunks(a_BP):
        return a_BP.reshape(B, Pn // chunk, chunk).swapaxes(0, 1)

    cache, last_NBD = jax.lax.scan(
        prefill_chunk, KVCache.empty(model.cfg, B, Pn),
        (chunks(tokens_BP), chunks(positions_BP), chunks(segment_ids_BP)))
    return cache, last_NBD[-1]


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _prefill(graphdef, weights, tokens_BP, lengths_B, keys_B, *, spec: _Spec) -> _Carry:
    TRACE_COUNTS["prefill"] += 1
    state, layers = weights
    model = nnx.merge(graphdef, state)
    B = tokens_BP.shape[0]
    # Then append max_new_tokens empty slots (segment id 0) for the loop.
    cache, last_BD = prefill_cache(model, layers, tokens_BP, lengths_B)

    def grow(a, axis, batch_dim):
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, spec.max_new_tokens)
        return _constrain(jnp.pad(a, widths), spec, batch_dim)

    cache = KVCache(tuple(grow(k, 3, 0) for k in cache.k_BKHS),
                    tuple(grow(v, 2, 0) for v in cache.v_BKSH),
                    grow(cache.segment_ids_BS, 1, 0), grow(cache.positions_BS, 1, 0), cache.index)
    logits_BV = model.logits(last_BD[:, None])[:, 0]  # only the last column predicts
    empty_B = lengths_B == 0  # batch padding rows
    tok_B = jnp.where(empty_B, -1, sample_tokens(logits_BV, keys_B, 0, spec.sampling))
    out_BN = jnp.full((B, spec.max_new_tokens), -1, jnp.int32).at[:, 0].set(tok_B)
    done_B = empty_B | _is_eos(tok_B, spec.eos_ids)
    return _Carry(cache, _constrain(out_BN, spec, 0), tok_B, lengths_B.astype(jnp.int32),
                  done_B, keys_B, jnp.ones((), jnp.int32))


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"), donate_argnames=("carry",))
def _extend(graphdef, weights, carry: _Carry, limit, stopped_B, *, spec: _Spec) -> _Carry:
    """Generate until `limit` tokens, or until every row is done (EOS, or `stopped_B` on host)."""
    TRACE_COUNTS["extend"] += 1
    state, layers = weights
    model = nnx.merge(graphdef, state)
    carry = carry.replace(done_B=carry.done_B | stopped_B)
    B = carry.tok_B.shape[0]
    ones_B1 = jnp.ones((B, 1), jnp.int32)

    def cond(c: _Carry):
        return (c.step < limit) & ~jnp.all(c.done_B)

    def body(c: _Carry) -> _Carry:
        feed_B1 = jnp.maximum(c.tok_B, 0)[:, None]
        logits_B1V, cache = model(feed_B1, c.pos_B[:, None], ones_B1, c.cache, layers)
        tok_B = sample_tokens(logits_B1V[:, 0], c.keys_B, c.step, spec.sampling)
        tok_B = jnp.where(c.done_B, -1, tok_B)
        out_BN = jax.lax.dynamic_update_slice(c.out_BN, tok_B[:, None], (0, c.step))
        return _Carry(cache, out_BN, tok_B, c.pos_B + 1, c.done_B | _is_eos(tok_B, spec.eos_ids),
                      c.keys_B, c.step + 1)

    return jax.lax.while_loop(cond, body, carry)


# ----------------------------------------------------------------------------------------------
# Host side


def _batch_axes(mesh) -> tuple[str, ...]:
    return tuple(a for a in mesh.axis_names if a != "tensor")


def _place_state(state, mesh):
    """Replicate parameters over the mesh unless they already live on it."""
    devices = set(mesh.devices.flat)
    replicated = NamedSharding(mesh, P())

    def place(x):
        if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices:
            return x
        return jax.device_put(x, replicated)

    return jax.tree.map(place, state)


def _setup(model, eos_ids, batch_size, mesh, sampling, max_new_tokens):
    eos = tuple(int(e) for e in (model.cfg.eos_token_ids if eos_ids is None else eos_ids))
    graphdef, state = nnx.split(model)
    batch_axes: tuple[str, ...] = ()
    if mesh is not None:
        # The model's ops rely on sharding propagation, so view the mesh with Auto axes
        # (jax.make_mesh makes Explicit ones by default).
        mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                                 axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
        batch_axes = _batch_axes(mesh)
        shards = math.prod(mesh.shape[a] for a in batch_axes)
        batch_size = -(-batch_size // shards) * shards  # round up to a multiple of the shards
        state = _place_state(state, mesh)
    # The jitted functions get (state, per-layer weights): the unrolled cached layers need each
    # layer's weights apart, and slicing them inside `_extend` copied all of them at every call
    # (~190 ms for SmolLM2, every `check_every` tokens).
    weights = (state, _layer_list(graphdef, state))
    return graphdef, weights, _Spec(max_new_tokens, sampling, eos, mesh, batch_axes), batch_size


@functools.partial(jax.jit, static_argnums=0)
def _layer_list(graphdef, state):
    return nnx.merge(graphdef, state).layer_list()


def _plan(prompts: Sequence[Sequence[int]], batch_size: int) -> list[tuple[list[int], int]]:
    """(prompt indices, bucketed length) per batch, prompts sorted by length."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batches.append((idx, bucket_length(max(len(prompts[i]) for i in idx))))
    return batches


def _run_batch(graphdef, weights, spec: _Spec, prompts, idx, plen, batch_size, prompt_keys,
               stop_fn, check_every, max_steps) -> np.ndarray:
    tokens = np.zeros((batch_size, plen), np.int32)
    lengths = np.zeros((batch_size,), np.int32)
    for r, i in enumerate(idx):
        tokens[r, plen - len(prompts[i]):] = prompts[i]
        lengths[r] = len(prompts[i])
    rows = np.array(list(idx) + [0] * (batch_size - len(idx)), np.int32)
    keys = prompt_keys[jnp.asarray(rows)]
    row_sharding = None
    args = [jnp.asarray(tokens), jnp.asarray(lengths), keys]
    if spec.mesh is not None:
        row_sharding = NamedSharding(spec.mesh, P(spec.batch_axes))
        args = [jax.device_put(a, row_sharding) for a in args]
    carry = _prefill(graphdef, weights, *args, spec=spec)
    chunk = check_every if stop_fn is not None else max_steps
    stopped = np.zeros((batch_size,), bool)
    while True:
        step = int(carry.step)
        if step >= max_steps or (np.asarray(carry.done_B) | stopped).all():
            break
        stopped_arr = jnp.asarray(stopped)
        if row_sharding is not None:
            stopped_arr = jax.device_put(stopped_arr, row_sharding)
        carry = _extend(graphdef, weights, carry, jnp.int32(min(max_steps, (step // chunk + 1) * chunk)),
                        stopped_arr, spec=spec)
        if stop_fn is not None:
            out, done = np.asarray(carry.out_BN), np.asarray(carry.done_B)
            for r, i in enumerate(idx):
                if not done[r] and not stopped[r] and stop_fn(i, _cut(out[r])):
                    stopped[r] = True
    return np.asarray(carry.out_BN)


def _check_prompts(prompts, max_new_tokens) -> list[list[int]]:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompts = [list(map(int, p)) for p in prompts]
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty (a continuation needs at least one token)")
    return prompts


def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             sampling: SamplingConfig = GREEDY, eos_ids: Sequence[int] | None = None,
             batch_size: int = 8, seed: int = 0, mesh: jax.sharding.Mesh | None = None,
             stop_fn: Callable[[int, list[int]], bool] | None = None, check_every: int = 32,
             progress: Callable[[int], None] | None = None,
             keys: jax.Array | None = None) -> list[list[int]]:
    """Continue each prompt (token ids); returns the new tokens per prompt, in prompt order.

    A continuation ends with its EOS id when one was emitted (as transformers returns it), else
    after `max_new_tokens` tokens or where `stop_fn(prompt index, tokens so far)` first said True
    (checked every `check_every` tokens; the tokens of that chunk are kept, cut them on the host).
    `eos_ids` defaults to the model's `cfg.eos_token_ids`; pass () to never stop at EOS.
    With a mesh, `batch_size` is rounded up to a multiple of the data-parallel devices.
    `progress(n)` is called with the number of prompts finished after each batch.
    `keys`: one PRNG key per prompt (default `fold_in(key(seed), prompt index)`).
    """
    prompts = _check_prompts(prompts, max_new_tokens)
    graphdef, weights, spec, batch_size = _setup(model, eos_ids, batch_size, mesh, sampling,
                                               max_new_tokens)
    if keys is None:
        keys = _index_keys(jax.random.key(seed), jnp.arange(len(prompts), dtype=jnp.uint32))
    if keys.shape != (len(prompts),):
        raise ValueError(f"keys: one per prompt ({len(prompts)}), got shape {keys.shape}")
    results: list[list[int]] = [[] for _ in prompts]
    for idx, plen in _plan(prompts, batch_size):
        out = _run_batch(graphdef, weights, spec, prompts, idx, plen, batch_size, keys,
                         stop_fn, check_every, max_new_tokens)
        for r, i in enumerate(idx):
            results[i] = _cut(out[r])
        if progress is not None:
            progress(len(idx))
    return results


def warmup(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
           sampling: SamplingConfig = GREEDY, eos_ids: Sequence[int] | None = None,
           batch_size: int = 8, mesh: jax.sharding.Mesh | None = None, **_) -> None:
    """Compile what `generate` with these arguments will run (one batch per bucket, 2 steps)."""
    prompts = _check_prompts(prompts, max_new_tokens)
    graphdef, weights, spec, batch_size = _setup(model, eos_ids, batch_size, mesh, sampling,
                                               max_new_tokens)
    seen = set()
    keys = _index_keys(jax.random.key(0), jnp.arange(len(prompts), dtype=jnp.uint32))
    for idx, plen in _plan(prompts, batch_size):
        if plen not in seen:
            seen.add(plen)
            _run_batch(graphdef, weights, spec, prompts, idx, plen, batch_size, keys,
                       None, 1, min(2, max_new_tokens))


@jax.jit
def _index_keys(base, idx):
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)


def _cut(row: np.ndarray) -> list[int]:
    ends = np.flatnonzero(row < 0)
    return row[:ends[0] if ends.size else row.size].tolist()


# ----------------------------------------------------------------------------------------------
# Text helpers


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str  # the continuation, without EOS and cut before the first stop string
    tokens: list[int]  # the generated ids (ending with the EOS id when one was emitted)
    finish: str  # "eos" | "stop" | "length"
    stop: str | None = None  # the stop string that ended it


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, str | None]:
    """(index, stop) of the earliest stop string in `text`, or (len(text), None)."""
    best, which = len(text), None
    for s in stops:
        j = text.find(s)
        if s and 0 <= j < best:
            best, which = j, s
    return best, which


def encode_prompt(tokenizer, prompt: str, add_special_tokens: bool = True) -> list[int]:
    """What transformers would see: `tokenizer(prompt).input_ids`."""
    return list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])


def generate_text(model, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]], *,
                  max_new_tokens: int, sampling: SamplingConfig = GREEDY,
                  stop: Sequence[str] = (), eos_ids: Sequence[int] | None = None,
                  batch_size: int = 8, seed: int = 0, mesh=None, check_every: int = 32,
                  progress: Callable[[int], None] | None = None) -> list[Completion]:
    """`generate` on text prompts (or pre-tokenized ids), decoded and cut at stop strings."""
    ids = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    eos = tuple(model.cfg.eos_token_ids if eos_ids is None else eos_ids)
    texts = TextRule(tokenizer, eos, stop)
    outs = generate(model, ids, max_new_tokens=max_new_tokens, sampling=sampling, eos_ids=eos,
                    batch_size=batch_size, seed=seed, mesh=mesh, stop_fn=texts.stop_fn(),
                    check_every=check_every, progress=progress)
    return [texts.complete(tokens) for tokens in outs]


class TextRule:
    """How generated ids become a Completion: decoded without EOS and special tokens, cut before
    the first stop string; shared by `generate_text` and the sampling engine's callers, so a
    sample's text is exactly what `cotjax eval` would have written."""

    def __init__(self, tokenizer, eos_ids: Sequence[int], stop: Sequence[str] = ()):
        self.tokenizer, self.eos = tokenizer, tuple(eos_ids)
        self.stop = tuple(s for s in stop if s)

    def text(self, tokens: Sequence[int]) -> str:
        tokens = list(tokens)
        if tokens and tokens[-1] in self.eos:
            tokens = tokens[:-1]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def stop_fn(self) -> Callable[[int, list[int]], bool] | None:
        """For `generate`/the engine: True once a row's text holds a stop string (None: none)."""
        if not self.stop:
            return None
        return lambda _, tokens: find_stop(self.text(tokens), self.stop)[1] is not None

    def complete(self, tokens: Sequence[int]) -> Completion:
        tokens = list(tokens)
        text = self.text(tokens)
        cut, which = find_stop(text, self.stop)
        if which is not None:
            finish = "stop"
        elif tokens and tokens[-1] in self.eos:
            finish = "eos"
        else:
            finish = "length"
        return Completion(text[:cut], tokens, finish, which)
