"""The sampling engine: many chains per prompt with continuous batching and one prefill per prompt.

Rows. `batch_size` rows decode together. Each row's cache has P prompt slots (P: the bucket of
the longest prompt) and then N = max_new_tokens generation slots used as a ring: global step t
writes column P + (t mod N) for every row. A row holds one (problem, sample) at a time, an
occupancy with its own segment id. An occupancy writes at most N - 1 tokens, so its ring
entries never overwrite each other, and the model's cached attention orders keys by position
(cotjax.model._attention_masks), so wrapped slots need no slot order. When a row ends (EOS, N
tokens, or a host stop string) the host hands it the next pending (problem, sample): the
problem's prompt cache is copied into the row's P slots under the new segment id, which hides
whatever the previous occupant left in the ring. A batch therefore costs about the mean sample
length, not the longest.

One prefill per prompt. Prompts are prefilled G at a time into a pool of 2G entries (their
caches and the logits after their last token); each of a problem's K samples copies the entry
(the compute is shared, the copy is cheap) and the entry is freed once every sample has a row.

Keys. A sample's key is `decode.sample_keys(seed, [problem], [sample])` and its token j draws
with `fold_in(key, j)`, as the static path (`decode.generate` with `keys=`) does; so a sample
depends on neither its row, its neighbours, its arrival time, the batch size, the devices nor
where a run was resumed.

Host round-trips. `_extend` runs until `check_every` tokens have passed or `quota` more rows have
ended; then the host checks stop strings, emits the finished samples and refills their rows.
Rows are sharded over the mesh's data axes (the pool is replicated).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from cotjax import decode
from cotjax.decode import GREEDY, SamplingConfig, _constrain, _is_eos, _Spec
from cotjax.model import KVCache


@dataclasses.dataclass(frozen=True)
class Request:
    """One problem: its index (the key's first half), prompt ids, and the samples to draw."""

    problem: int
    prompt: Sequence[int]
    samples: Sequence[int]


@dataclasses.dataclass(frozen=True)
class Sample:
    problem: int
    sample: int
    tokens: list[int]  # ends with the EOS id when one was emitted
    logprob: float  # sum of the tokens' log-probabilities under the model (temperature 1)
    stopped: bool  # ended by the host's stop rule


@struct.dataclass
class _Rows:
    cache: KVCache
    out_BN: jax.Array  # this occupancy's tokens; -1 beyond
    tok_B: jax.Array  # last token (fed next)
    pos_B: jax.Array  # its position
    n_B: jax.Array  # tokens of this occupancy so far
    seg_B: jax.Array  # the occupancy's segment id
    done_B: jax.Array
    keys_B: jax.Array
    logp_B: jax.Array
    step: jax.Array  # global step (picks the ring column)


@struct.dataclass
class _Pool:
    k: tuple  # per layer [M, K, H, P]
    v: tuple  # per layer [M, K, P, H]
    seg_MP: jax.Array
    pos_MP: jax.Array
    logits_MV: jax.Array
    len_M: jax.Array


def _token_logprob(logits_BV, tok_B):
    lp = jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(lp, tok_B[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"), donate_argnames=("pool",))
def _fill_pool(graphdef, weights, pool: _Pool, tokens_GP, lengths_G, slots_G, *, spec: _Spec):
    """Prefill G prompts into pool entries `slots_G` (M, out of range, for padding rows)."""
    decode.TRACE_COUNTS["engine_prefill"] += 1
    state, layers = weights
    model = nnx.merge(graphdef, state)
    cache, last_GD = decode.prefill_cache(model, layers, tokens_GP, lengths_G)
    logits_GV = model.logits(last_GD[:, None])[:, 0]

    def put(buf, new):
        return buf.at[slots_G].set(new.astype(buf.dtype), mode="drop")

    return _Pool(tuple(map(put, pool.k, cache.k_BKHS)), tuple(map(put, pool.v, cache.v_BKSH)),
                 put(pool.seg_MP, cache.segment_ids_BS), put(pool.pos_MP, cache.positions_BS),
                 put(pool.logits_MV, logits_GV), put(pool.len_M, lengths_G))


@functools.partial(jax.jit, static_argnames=("spec",), donate_argnames=("rows",))
def _refill(rows: _Rows, pool: _Pool, new_B, slot_B, keys_B, seg_B, *, spec: _Spec) -> _Rows:
    """Start the rows `new_B` on pool entries `slot_B` with fresh keys and segment ids."""
    decode.TRACE_COUNTS["engine_refill"] += 1
    P = pool.seg_MP.shape[1]
    N = spec.max_new_tokens

    def prefix(buf, src, axis):  # columns [0, P) of `buf` from `src` (one per row), new rows only
        cur = jax.lax.slice_in_dim(buf, 0, P, axis=axis)
        mask = new_B.reshape((-1,) + (1,) * (buf.ndim - 1))
        upd = jnp.where(mask, src.astype(buf.dtype), cur)
        return _constrain(jax.lax.dynamic_update_slice_in_dim(buf, upd, 0, axis), spec, 0)

    c = rows.cache
    cache = KVCache(tuple(prefix(b, s[slot_B], 3) for b, s in zip(c.k_BKHS, pool.k)),
                    tuple(prefix(b, s[slot_B], 2) for b, s in zip(c.v_BKSH, pool.v)),
                    prefix(c.segment_ids_BS, (pool.seg_MP[slot_B] != 0) * seg_B[:, None], 1),
                    prefix(c.positions_BS, pool.pos_MP[slot_B], 1), c.index)
    logits_BV = pool.logits_MV[slot_B]
    tok_B = decode.sample_tokens(logits_BV, keys_B, 0, spec.sampling)
    first = jnp.full_like(rows.out_BN, -1).at[:, 0].set(tok_B)

    def pick(new, old):
        return jnp.where(new_B.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

    return _Rows(cache, pick(first, rows.out_BN), pick(tok_B, rows.tok_B),
                 pick(pool.len_M[slot_B], rows.pos_B), pick(jnp.ones_like(rows.n_B), rows.n_B),
                 pick(seg_B, rows.seg_B), pick(_is_eos(tok_B, spec.eos_ids) | (N <= 1), rows.done_B),
                 pick(keys_B, rows.keys_B), pick(_token_logprob(logits_BV, tok_B), rows.logp_B),
                 rows.step)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"), donate_argnames=("rows",))
def _extend(graphdef, weights, rows: _Rows, limit, quota, stopped_B, *, spec: _Spec) -> _Rows:
    """Decode until global step `limit`, until `quota` more rows ended, or until all did."""
    decode.TRACE_COUNTS["engine_extend"] += 1
    state, layers = weights
    model = nnx.merge(graphdef, state)
    N = spec.max_new_tokens
    P = rows.cache.segment_ids_BS.shape[1] - N
    rows = rows.replace(done_B=rows.done_B | stopped_B)
    B = rows.tok_B.shape[0]
    ended_before = jnp.sum(rows.done_B)

    def cond(r: _Rows):
        return (r.step < limit) & (jnp.sum(r.done_B) - ended_before < quota) & ~jnp.all(r.done_B)

    def body(r: _Rows) -> _Rows:
        cache = r.cache.replace(index=P + r.step % N)
        logits_B1V, cache = model(jnp.maximum(r.tok_B, 0)[:, None], r.pos_B[:, None],
                                  r.seg_B[:, None], cache, layers)
        logits_BV = logits_B1V[:, 0]
        tok_B = decode.sample_tokens(logits_BV, r.keys_B, r.n_B, spec.sampling)
        live_B = ~r.done_B
        out_BN = r.out_BN.at[jnp.arange(B), jnp.where(live_B, r.n_B, N)].set(tok_B, mode="drop")
        n_B = r.n_B + live_B
        done_B = r.done_B | (live_B & (_is_eos(tok_B, spec.eos_ids) | (n_B >= N)))
        return _Rows(cache, out_BN, jnp.where(live_B, tok_B, r.tok_B), r.pos_B + live_B, n_B,
                     r.seg_B, done_B, r.keys_B,
                     r.logp_B + jnp.where(live_B, _token_logprob(logits_BV, tok_B), 0.0),
                     r.step + 1)

    return jax.lax.while_loop(cond, body, rows)


def _empty_rows(cfg, B: int, P: int, spec: _Spec) -> _Rows:
    N = spec.max_new_tokens
    cache = KVCache.empty(cfg, B, P + N)
    cache = jax.tree.map(lambda a: _constrain(a, spec, 0) if a.ndim else a, cache)
    def zeros():  # one buffer each: the rows are donated
        return jnp.zeros((B,), jnp.int32)

    return _Rows(cache, jnp.full((B, N), -1, jnp.int32), zeros(), zeros(), zeros(), zeros(),
                 jnp.ones((B,), bool), decode.sample_keys(0, np.zeros(B), np.zeros(B)),
                 jnp.zeros((B,), jnp.float32), jnp.zeros((), jnp.int32))


def _empty_pool(cfg, M: int, P: int, dtype) -> _Pool:
    K, H = cfg.num_kv_heads, cfg.head_dim
    return _Pool(tuple(jnp.zeros((M, K, H, P), dtype) for _ in range(cfg.num_layers)),
                 tuple(jnp.zeros((M, K, P, H), dtype) for _ in range(cfg.num_layers)),
                 jnp.zeros((M, P), jnp.int32), jnp.zeros((M, P), jnp.int32),
                 jnp.zeros((M, cfg.vocab_size), jnp.float32), jnp.zeros((M,), jnp.int32))


def _check_requests(requests: Sequence[Request], max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    seen = set()
    for r in requests:
        if not len(r.prompt):
            raise ValueError(f"problem {r.problem}: empty prompt (a continuation needs a token)")
        for s in r.samples:
            if (r.problem, s) in seen:
                raise ValueError(f"problem {r.problem}: sample {s} requested twice")
            seen.add((r.problem, s))


def sample(model, requests: Sequence[Request], *, max_new_tokens: int,
           sampling: SamplingConfig = GREEDY, eos_ids: Sequence[int] | None = None,
           batch_size: int = 64, seed: int = 0, mesh: jax.sharding.Mesh | None = None,
           stop_fn: Callable[[int, list[int]], bool] | None = None,
           check_every: int = 32) -> Iterator[Sample]:
    """Yield every requested (problem, sample) as soon as it ends, in order of ending.

    `stop_fn(problem, tokens so far)` ends a row when True (checked every round of at most
    `check_every` tokens; the round's tokens are kept, cut the text on the host). `eos_ids`
    defaults to the model's. With a mesh, rows are sharded over its non-tensor axes and
    `batch_size` is rounded up to a multiple of them.
    """
    _check_requests(requests, max_new_tokens)
    if not requests:
        return
    graphdef, weights, spec, B = decode._setup(model, eos_ids, batch_size, mesh, sampling,
                                                 max_new_tokens)
    cfg = model.cfg
    N = max_new_tokens
    P = decode.bucket_length(max(len(r.prompt) for r in requests))
    widest = max(len(r.samples) for r in requests) or 1
    G = max(1, min(len(requests), -(-B // widest)))  # prompts per prefill
    M = 2 * G
    pool = _empty_pool(cfg, M, P, jnp.dtype(cfg.compute_dtype))
    rows = _empty_rows(cfg, B, P, spec)

    pending = collections.deque((i, s) for i, r in enumerate(requests) for s in r.samples)
    unassigned = collections.Counter(i for i, _ in pending)
    in_pool: dict[int, int] = {}
    free_slots = list(range(M))
    next_prefill = 0  # requests are prefilled in order
    owner: list[tuple[int, int] | None] = [None] * B
    occupancy = np.zeros(B, np.int64)
    stopped = np.zeros(B, bool)

    def prefill_next():
        nonlocal pool, next_prefill
        take = []
        while next_prefill < len(requests) and len(take) < min(G, len(free_slots)):
            if unassigned[next_prefill]:
                take.append(next_prefill)
            next_prefill += 1
        tokens = np.zeros((G, P), np.int32)
        lengths = np.zeros(G, np.int32)
        slots = np.full(G, M, np.int32)
        for g, i in enumerate(take):
            prompt = requests[i].prompt
            tokens[g, P - len(prompt):] = prompt
            lengths[g] = len(prompt)
            slots[g] = in_pool[i] = free_slots.pop(0)
        pool = _fill_pool(graphdef, weights, pool, jnp.asarray(tokens), jnp.asarray(lengths),
                          jnp.asarray(slots), spec=spec)

    def assign() -> bool:
        """Start pending samples on free rows; False when none could start."""
        nonlocal rows
        new = np.zeros(B, bool)
        slot = np.zeros(B, np.int32)
        problems = np.zeros(B, np.int64)
        samples = np.zeros(B, np.int64)
        freed = []
        for r in range(B):
            if owner[r] is not None or not pending:
                continue
            i, s = pending[0]
            if i not in in_pool:
                if not free_slots:
                    break  # the slots freed by this round's rows come back after the refill
                prefill_next()
            pending.popleft()
            owner[r] = (i, s)
            occupancy[r] += 1
            new[r], slot[r], stopped[r] = True, in_pool[i], False
            problems[r], samples[r] = requests[i].problem, s
            unassigned[i] -= 1
            if not unassigned[i]:
                freed.append(in_pool.pop(i))
        if not new.any():
            return False
        rows = _refill(rows, pool, jnp.asarray(new), jnp.asarray(slot),
                       decode.sample_keys(seed, problems, samples),
                       jnp.asarray(occupancy.astype(np.int32)), spec=spec)
        free_slots.extend(freed)  # only after the refill has read them
        return True

    while True:
        while pending and None in owner and assign():
            pass
        if all(o is None for o in owner):
            assert not pending, "engine: pending samples but no row could start"
            return
        quota = max(1, B // 8) if pending else B
        step = int(rows.step)
        rows = _extend(graphdef, weights, rows, jnp.int32(step + check_every), jnp.int32(quota),
                       jnp.asarray(stopped), spec=spec)
        done = np.asarray(rows.done_B)
        n = np.asarray(rows.n_B)
        out = np.asarray(rows.out_BN)
        if stop_fn is not None:
            for r in range(B):
                if owner[r] is not None and not done[r] and stop_fn(owner[r][0], out[r, :n[r]].tolist()):
                    stopped[r] = True
        logp = np.asarray(rows.logp_B)
        for r in range(B):
            if owner[r] is not None and (done[r] or stopped[r]):
                i, s = owner[r]
                owner[r] = None
                yield Sample(requests[i].problem, s, out[r, :n[r]].tolist(), float(logp[r]),
                             bool(stopped[r] and not done[r]))
