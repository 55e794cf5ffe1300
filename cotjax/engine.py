"""The sampling engine: many chains per prompt with continuous batching and one prefill per prompt.

Rows. `batch_size` rows decode together. Each row's cache has P prompt slots (P: the bucket of
the longest prompt) and then N = max_new_tokens generation slots. A row holds one (problem,
sample) at a time, an occupancy with its own segment id, and writes its j-th generated token
to slot P + j (each row at its own slot: KVCache.index per row), so a row may wait while the
others go on. When a row ends (EOS, N tokens, or a host stop string) the host hands it the
next pending (problem, sample): the problem's prompt cache is copied into the row's P slots
under the new segment id, which hides whatever the previous occupant left in the rest. A
batch therefore costs about the mean sample length, not the longest.

One prefill per prompt. Prompts are prefilled G at a time into a pool of 2G entries (their
caches and the logits after their last token); each of a problem's K samples copies the entry
(the compute is shared, the copy is cheap) and the entry is freed once every sample has a row.

Keys. A sample's key is `decode.sample_keys(seed, [problem], [sample])` and its token j draws
with `fold_in(key, j)`, as the static path (`decode.generate` with `keys=`) does; so a sample
depends on neither its row, its neighbours, its arrival time, the batch size, the devices nor
where a run was resumed.

Host round-trips. `_extend` runs until `check_every` tokens have passed, `quota` more rows have
ended or (with a tool hook) `wait_share` of the decoding rows wait at a trigger token for the
host; then the host answers the triggers, checks stop strings (with a hook, only those of rows
with `check_every` new tokens since their last check), emits the finished samples and refills
their rows.
Rows are sharded over the mesh's data axes (the pool is replicated).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
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
    # A hook's insertions: {"at": token index, "forced": ids, "model": the model's own argmax
    # ids at those positions (teacher-forced), **the hook's note}; `declined`: triggers the hook
    # passed on.
    interventions: tuple[dict, ...] = ()
    declined: int = 0


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
    step: jax.Array  # decoding steps of the batch (a round ends by `check_every` of them)
    # The tool hook (all unused without one): tokens to force, the next one's index (F: none),
    # the model's own argmax where tokens were forced, and rows stopped at a trigger token.
    force_BF: jax.Array
    fi_B: jax.Array
    own_BN: jax.Array
    hit_B: jax.Array  # waiting at a trigger token for the host
    guard_B: jax.Array  # 1: a value was just forced; 2: ...and then '.' or ','
    waits: jax.Array  # steps rows spent waiting, summed over rows (a scalar)


@struct.dataclass
class _Pool:
    k: tuple  # per layer [M, K, H, P]
    v: tuple  # per layer [M, K, P, H]
    seg_MP: jax.Array
    pos_MP: jax.Array
    logits_MV: jax.Array
    len_M: jax.Array


# engine.sample's default `wait_share` (docs/sample_distill.md, "The engine"; the CPU's from
# benchmarks/tool_rounds.py, the accelerator's not measured yet)
WAIT_SHARE = {"cpu": 0.0, "accelerator": 0.125}

# Token classes of the tool hook (bits of `classes_V`, from the host).
TRIGGER, EXTENDS_NUMBER, SEPARATOR, DIGIT = 1, 2, 4, 8


def _has(classes_V, tok_B, bit):
    return (classes_V[tok_B] & bit) != 0


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
def _refill(rows: _Rows, pool: _Pool, new_B, slot_B, keys_B, seg_B, classes_V, *,
            spec: _Spec) -> _Rows:
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

    F = rows.force_BF.shape[1]
    done_B = _is_eos(tok_B, spec.eos_ids) | (N <= 1)
    return _Rows(cache, pick(first, rows.out_BN), pick(tok_B, rows.tok_B),
                 pick(pool.len_M[slot_B], rows.pos_B), pick(jnp.ones_like(rows.n_B), rows.n_B),
                 pick(seg_B, rows.seg_B), pick(done_B, rows.done_B),
                 pick(keys_B, rows.keys_B), pick(_token_logprob(logits_BV, tok_B), rows.logp_B),
                 rows.step, rows.force_BF, pick(jnp.full_like(rows.fi_B, F), rows.fi_B),
                 pick(jnp.full_like(rows.own_BN, -1), rows.own_BN),
                 pick(_has(classes_V, tok_B, TRIGGER) & ~done_B, rows.hit_B),
                 pick(jnp.zeros_like(rows.guard_B), rows.guard_B), rows.waits)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "hook"),
                   donate_argnames=("rows",))
def _extend(graphdef, weights, rows: _Rows, limit, quota, wait_share, stopped_B, handled_B,
            force_BF, set_B, classes_V, *, spec: _Spec, hook: bool) -> _Rows:
    """Decode until global step `limit`, until `quota` more rows ended, until all did, or (with
    a hook) until `wait_share` of the decoding rows (at least one) wait at a trigger token. The
    host has handled the triggers of rows `handled_B`; rows `set_B` among them start by forcing
    `force_BF`."""
    decode.TRACE_COUNTS["engine_extend"] += 1
    state, layers = weights
    model = nnx.merge(graphdef, state)
    N = spec.max_new_tokens
    P = rows.cache.segment_ids_BS.shape[1] - N
    F = rows.force_BF.shape[1]
    rows = rows.replace(done_B=rows.done_B | stopped_B, hit_B=rows.hit_B & ~handled_B,
                        force_BF=jnp.where(set_B[:, None], force_BF, rows.force_BF),
                        fi_B=jnp.where(set_B, 0, rows.fi_B))
    B = rows.tok_B.shape[0]
    ended_before = jnp.sum(rows.done_B)
    # A row that emitted a trigger waits for the host; the round ends once `wait_share` of the
    # rows that were decoding wait, so the host answers triggers in batches instead of the
    # round ending at every one (about every token with hundreds of rows).
    decoding = jnp.sum(~rows.done_B & ~rows.hit_B)
    wait_quota = jnp.maximum(1, jnp.floor(decoding * wait_share).astype(jnp.int32))

    def cond(r: _Rows):
        go = (r.step < limit) & (jnp.sum(r.done_B) - ended_before < quota)
        if not hook:
            return go & ~jnp.all(r.done_B)
        waiting = jnp.sum(r.hit_B & ~r.done_B)
        return go & (waiting < wait_quota) & ~jnp.all(r.done_B | r.hit_B)

    def body(r: _Rows) -> _Rows:
        # Each row writes its token j to slot P + j as it feeds it: a waiting row writes its
        # trigger token's slot again (the same keys its next step writes), a finished row its
        # last token's own slot, an empty row slot P under segment 0 (hidden).
        cache = r.cache.replace(index=P + jnp.maximum(r.n_B - 1, 0))
        logits_B1V, cache = model(jnp.maximum(r.tok_B, 0)[:, None], r.pos_B[:, None],
                                  r.seg_B[:, None], cache, layers)
        cache = cache.replace(index=r.cache.index)
        logits_BV = logits_B1V[:, 0]
        live_B = ~r.done_B & ~r.hit_B if hook else ~r.done_B
        rows_B = jnp.arange(B)
        own_BN, fi_B, hit_B, guard_B = r.own_BN, r.fi_B, r.hit_B, r.guard_B
        draw_BV = logits_BV
        if hook:  # a forced value is a whole number: the model may not extend it ("6" + ".40")
            banned_BV = (((guard_B == 1)[:, None] & ((classes_V & EXTENDS_NUMBER) != 0)[None])
                         | ((guard_B == 2)[:, None] & ((classes_V & DIGIT) != 0)[None]))
            draw_BV = jnp.where(banned_BV, -jnp.inf, logits_BV)
        tok_B = decode.sample_tokens(draw_BV, r.keys_B, r.n_B, spec.sampling)
        if hook:  # a forced token replaces the draw; the model's own argmax is kept beside it
            forced_B = r.force_BF[rows_B, jnp.minimum(r.fi_B, F - 1)]
            forcing_B = live_B & (r.fi_B < F) & (forced_B >= 0)
            own_BN = own_BN.at[rows_B, jnp.where(forcing_B, r.n_B, N)].set(
                decode.argmax(logits_BV), mode="drop")
            tok_B = jnp.where(forcing_B, forced_B, tok_B)
            fi_B = jnp.where(forcing_B, fi_B + 1, fi_B)
            last_B = forcing_B & ((fi_B >= F) | (r.force_BF[rows_B, jnp.minimum(fi_B, F - 1)] < 0))
            after_sep_B = (guard_B == 1) & _has(classes_V, tok_B, SEPARATOR)
            guard_B = jnp.where(live_B, jnp.where(last_B, 1, jnp.where(after_sep_B, 2, 0)),
                                guard_B)
        out_BN = r.out_BN.at[rows_B, jnp.where(live_B, r.n_B, N)].set(tok_B, mode="drop")
        n_B = r.n_B + live_B
        done_B = r.done_B | (live_B & (_is_eos(tok_B, spec.eos_ids) | (n_B >= N)))
        if hook:
            hit_B = r.hit_B | (live_B & ~forcing_B & ~done_B & _has(classes_V, tok_B, TRIGGER))
        return _Rows(cache, out_BN, jnp.where(live_B, tok_B, r.tok_B), r.pos_B + live_B, n_B,
                     r.seg_B, done_B, r.keys_B,
                     r.logp_B + jnp.where(live_B, _token_logprob(logits_BV, tok_B), 0.0),
                     r.step + 1, r.force_BF, fi_B, own_BN, hit_B, guard_B,
                     r.waits + jnp.sum(r.hit_B & ~r.done_B))

    return jax.lax.while_loop(cond, body, rows)


def _empty_rows(cfg, B: int, P: int, spec: _Spec, F: int) -> _Rows:
    N = spec.max_new_tokens
    cache = KVCache.empty(cfg, B, P + N)
    cache = jax.tree.map(lambda a: _constrain(a, spec, 0) if a.ndim else a, cache)
    def zeros():  # one buffer each: the rows are donated
        return jnp.zeros((B,), jnp.int32)

    return _Rows(cache, jnp.full((B, N), -1, jnp.int32), zeros(), zeros(), zeros(), zeros(),
                 jnp.ones((B,), bool), decode.sample_keys(0, np.zeros(B), np.zeros(B)),
                 jnp.zeros((B,), jnp.float32), jnp.zeros((), jnp.int32),
                 jnp.full((B, F), -1, jnp.int32), jnp.full((B,), F, jnp.int32),
                 jnp.full((B, N), -1, jnp.int32), jnp.zeros((B,), bool),
                 jnp.zeros((B,), jnp.int32), jnp.zeros((), jnp.int32))


def _empty_pool(cfg, M: int, P: int, dtype) -> _Pool:
    K, H = cfg.num_kv_heads, cfg.head_dim
    return _Pool(tuple(jnp.zeros((M, K, H, P), dtype) for _ in range(cfg.num_layers)),
                 tuple(jnp.zeros((M, K, P, H), dtype) for _ in range(cfg.num_layers)),
                 jnp.zeros((M, P), jnp.int32), jnp.zeros((M, P), jnp.int32),
                 jnp.zeros((M, cfg.vocab_size), jnp.float32), jnp.zeros((M,), jnp.int32))


def prompt_slots(n: int) -> int:
    """Prompt slots for prompts of up to n tokens: one compiled program serves a whole run, so
    multiples of 16 rather than the static path's powers of two (every decode step reads all
    the slots: 144 instead of 256 for GSM8K's chat prompts); beyond 256, multiples of
    decode.PREFILL_CHUNK, the prefill's chunk."""
    return -(-n // 16) * 16 if n <= decode.PREFILL_CHUNK else decode.bucket_length(n)


def _check_requests(requests: Sequence[Request], max_new_tokens: int,
                    wait_share: float) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0 <= wait_share <= 1:
        raise ValueError(f"wait_share must be in [0, 1], got {wait_share}")
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
           check_every: int = 32, hook: Callable | None = None,
           trigger_ids: Sequence[int] = (), number_ids: dict | None = None,
           max_forced: int = 16, wait_share: float | None = None, prompt_slots_min: int = 0,
           stats: collections.Counter | None = None) -> Iterator[Sample]:
    """Yield every requested (problem, sample) as soon as it ends, in order of ending.

    `stop_fn(problem, tokens so far)` ends a row when True, asked at the end of a round (at
    most `check_every` tokens; the round's tokens are kept, cut the text on the host). With a
    hook rounds can end every few tokens, and asking every row each time would decode every
    row's text each time: there a row is asked once it has `check_every` new tokens since it
    was last asked, so it may run up to about 2 x `check_every` tokens past its stop string.
    Without a hook every live row is asked every round, as beam search's one-step expansions
    need. `eos_ids` defaults to the model's. With a mesh, rows are sharded over its non-tensor
    axes and `batch_size` is rounded up to a multiple of them.

    Tools (`hook`, e.g. cotjax.calculator.Hook): when a row emits one of `trigger_ids` it waits,
    the other rows decoding on, until the loop returns to the host, which calls
    `hook(problem, tokens so far)`; a returned `(ids, note)` (at most `max_forced` ids) is
    forced as the row's next tokens, fed through the model like generated ones (their keys and
    values enter the cache as a prefill of the same text would put them), and recorded in the
    Sample with the model's own argmax there. None lets the row continue unaided (counted).
    The round ends once `wait_share` of the decoding rows wait (at least one; 0: at the first
    trigger). The default, `WAIT_SHARE`, follows jax's default backend: 0 on a CPU (measured:
    a decoding step costs hundreds of ms there and a round trip next to nothing, so waiting
    only loses steps), 1/8 elsewhere (where a round trip should cost many steps; not measured
    yet). Waiting changes no row's tokens (a sample depends on its key and its own tokens
    only), so without claims the output is token for token what it is without a hook.
    `number_ids` ({"extends": ids, "separator": ids, "digit": ids}; calculator.token_classes):
    right after a forced value the model may not extend it: no token that continues a number
    (a digit, or '.5'), and after a bare '.' or ',' no digit ("= 6" + ".40" would undo it).

    `stats` (a Counter, optional) gains the host's account: `rounds`, `steps` (decoding steps
    of the batch), `stop_checks`, `hook_calls`, `waits` (steps rows spent waiting at a trigger,
    summed over rows: decoding they did not use), and the seconds spent decoding (`decode_s`:
    the loop, the refills queued before it, and the copy to the host), in the hook (`hook_s`)
    and in stop checks (`stop_s`); `steps` and `waits` are added when the generator ends or is
    closed.

    Shapes. A call compiles for its longest prompt's slots and its number of requests; a caller
    that calls repeatedly with growing prompts (beam search, once per depth) passes
    `prompt_slots_min` (at least that many prompt slots, and a full prefill group whatever the
    number of requests), so that every call with prompts that fit reuses one compiled program.
    """
    if wait_share is None:
        wait_share = WAIT_SHARE["cpu" if jax.default_backend() == "cpu" else "accelerator"]
    _check_requests(requests, max_new_tokens, wait_share)
    if not requests:
        return
    run = _Scheduler(model, requests, max_new_tokens, sampling, eos_ids, batch_size, seed, mesh,
                     hook, trigger_ids, number_ids, max_forced, wait_share, prompt_slots_min)
    stats = collections.Counter() if stats is None else stats

    def account():  # the device's counters, once the rows are done (or the caller stopped)
        stats.update(waits=int(run.rows.waits), steps=int(run.rows.step))

    try:
        yield from _rounds(run, requests, stats, hook, stop_fn, check_every)
    except GeneratorExit:
        account()
        raise
    account()


def _rounds(run, requests, stats, hook, stop_fn, check_every) -> Iterator[Sample]:
    """`sample`'s host loop: refill free rows, decode a round, answer the hook and stop_fn."""
    clock = time.perf_counter
    while True:
        while run.pending and None in run.owner and run.assign():
            pass
        if all(o is None for o in run.owner):
            assert not run.pending, "engine: pending samples but no row could start"
            return
        t0 = clock()
        out, n, done = run.advance(check_every)
        t1 = clock()
        if hook is not None:
            stats["hook_calls"] += run.call_hook(hook, out, n)
        t2 = clock()
        if stop_fn is not None:
            for r in run.stop_due(n, done, check_every if hook is not None else 1):
                stats["stop_checks"] += 1
                if stop_fn(requests[run.owner[r][0]].problem, out[r, :n[r]].tolist()):
                    run.stopped[r] = True
        stats.update(rounds=1, decode_s=t1 - t0, hook_s=t2 - t1, stop_s=clock() - t2)
        yield from run.finished(out, n, done)


class _Scheduler:
    """The host side of `sample`: which (problem, sample) each row holds, the prompt pool, and
    the tool hook's per-row state."""

    def __init__(self, model, requests, max_new_tokens, sampling, eos_ids, batch_size, seed,
                 mesh, hook, trigger_ids, number_ids, max_forced, wait_share, prompt_slots_min):
        self.graphdef, self.weights, self.spec, B = decode._setup(
            model, eos_ids, batch_size, mesh, sampling, max_new_tokens)
        cfg = model.cfg
        self.requests, self.seed, self.B, self.F = requests, seed, B, max_forced
        self.wait_share = wait_share
        self.P = prompt_slots(max(prompt_slots_min, *(len(r.prompt) for r in requests)))
        widest = max(len(r.samples) for r in requests) or 1
        group = -(-B // widest)  # prompts per prefill; fewer when there are fewer requests,
        self.G = max(1, group if prompt_slots_min else min(len(requests), group))  # unless fixed
        self.M = 2 * self.G
        self.pool = _empty_pool(cfg, self.M, self.P, jnp.dtype(cfg.compute_dtype))
        self.rows = _empty_rows(cfg, B, self.P, self.spec, self.F)
        self.hooked = hook is not None
        self.classes_V = jnp.asarray(_token_classes(cfg.vocab_size, trigger_ids, number_ids)
                                     if self.hooked else np.zeros(cfg.vocab_size, np.int8))
        self.pending = collections.deque((i, s) for i, r in enumerate(requests)
                                         for s in r.samples)
        self.unassigned = collections.Counter(i for i, _ in self.pending)
        self.in_pool: dict[int, int] = {}
        self.free_slots = list(range(self.M))
        self.next_prefill = 0  # requests are prefilled in order
        self.owner: list[tuple[int, int] | None] = [None] * B
        self.occupancy = np.zeros(B, np.int64)
        self.stopped = np.zeros(B, bool)
        self.asked = np.zeros(B, np.int64)  # tokens a row had when stop_fn last saw it
        self.notes: list[list[dict]] = [[] for _ in range(B)]
        self.declined = np.zeros(B, np.int64)
        self.handled = np.zeros(B, bool)  # rows whose trigger the host has handled
        self.force = np.full((B, self.F), -1, np.int32)
        self.forced = np.zeros(B, bool)  # rows that start forcing `force` at the next advance

    def prefill_next(self) -> None:
        """Prefill the next requests (in order) with samples left into free pool entries."""
        take = []
        while (self.next_prefill < len(self.requests)
               and len(take) < min(self.G, len(self.free_slots))):
            if self.unassigned[self.next_prefill]:
                take.append(self.next_prefill)
            self.next_prefill += 1
        tokens = np.zeros((self.G, self.P), np.int32)
        lengths = np.zeros(self.G, np.int32)
        slots = np.full(self.G, self.M, np.int32)
        for g, i in enumerate(take):
            prompt = self.requests[i].prompt
            tokens[g, self.P - len(prompt):] = prompt
            lengths[g] = len(prompt)
            slots[g] = self.in_pool[i] = self.free_slots.pop(0)
        self.pool = _fill_pool(self.graphdef, self.weights, self.pool, jnp.asarray(tokens),
                               jnp.asarray(lengths), jnp.asarray(slots), spec=self.spec)

    def assign(self) -> bool:
        """Start pending samples on free rows; False when none could start."""
        B = self.B
        new = np.zeros(B, bool)
        slot = np.zeros(B, np.int32)
        problems = np.zeros(B, np.int64)
        samples = np.zeros(B, np.int64)
        freed = []
        for r in range(B):
            if self.owner[r] is not None or not self.pending:
                continue
            i, s = self.pending[0]
            if i not in self.in_pool:
                if not self.free_slots:
                    break  # the slots freed by this round's rows come back after the refill
                self.prefill_next()
            self.pending.popleft()
            self.owner[r] = (i, s)
            self.occupancy[r] += 1
            new[r], slot[r], self.stopped[r], self.asked[r] = True, self.in_pool[i], False, 0
            self.notes[r], self.declined[r] = [], 0
            self.handled[r] = self.forced[r] = False  # the refill resets the trigger state
            problems[r], samples[r] = self.requests[i].problem, s
            self.unassigned[i] -= 1
            if not self.unassigned[i]:
                freed.append(self.in_pool.pop(i))
        if not new.any():
            return False
        self.rows = _refill(self.rows, self.pool, jnp.asarray(new), jnp.asarray(slot),
                            decode.sample_keys(self.seed, problems, samples),
                            jnp.asarray(self.occupancy.astype(np.int32)), self.classes_V,
                            spec=self.spec)
        self.free_slots.extend(freed)  # only after the refill has read them
        return True

    def advance(self, check_every: int):
        """One round of decoding; (tokens [B, N], counts, done flags) on the host."""
        quota = max(1, self.B // 8) if self.pending else self.B
        step = int(self.rows.step)
        self.rows = _extend(self.graphdef, self.weights, self.rows, jnp.int32(step + check_every),
                            jnp.int32(quota), jnp.float32(self.wait_share),
                            jnp.asarray(self.stopped),
                            jnp.asarray(self.handled), jnp.asarray(self.force),
                            jnp.asarray(self.forced), self.classes_V, spec=self.spec,
                            hook=self.hooked)
        self.handled[:], self.forced[:] = False, False
        return (np.asarray(self.rows.out_BN), np.asarray(self.rows.n_B),
                np.asarray(self.rows.done_B))

    def stop_due(self, n, done, every: int) -> list[int]:
        """The live rows with `every` new tokens since stop_fn last saw them."""
        due = [r for r in range(self.B) if self.owner[r] is not None and not done[r]
               and n[r] - self.asked[r] >= every]
        self.asked[due] = n[due]
        return due

    def call_hook(self, hook, out, n) -> int:
        """Ask the hook about every row that stopped at a trigger token; how many it was asked."""
        asked = 0
        for r in np.flatnonzero(np.asarray(self.rows.hit_B)):
            self.handled[r] = True
            if self.owner[r] is None:
                continue
            asked += 1
            got = hook(self.requests[self.owner[r][0]].problem, out[r, :n[r]].tolist())
            if got is None:
                self.declined[r] += 1
                continue
            ids, note = got
            if not 0 < len(ids) <= self.F:
                raise ValueError(f"hook: {len(ids)} tokens to force; 1 to {self.F} are allowed")
            self.force[r] = -1
            self.force[r, :len(ids)] = ids
            self.forced[r] = True
            self.notes[r].append({"at": int(n[r]), "forced": list(map(int, ids)), **note})
        return asked

    def finished(self, out, n, done) -> Iterator[Sample]:
        """The samples of rows that ended this round; their rows become free."""
        logp = np.asarray(self.rows.logp_B)
        own = np.asarray(self.rows.own_BN) if self.hooked else None
        for r in range(self.B):
            if self.owner[r] is None or not (done[r] or self.stopped[r]):
                continue
            i, s = self.owner[r]
            self.owner[r], self.forced[r] = None, False  # no forcing for the next occupant
            calls = tuple({**c, "model": own[r, c["at"]:c["at"] + len(c["forced"])].tolist()}
                          for c in self.notes[r])
            yield Sample(self.requests[i].problem, s, out[r, :n[r]].tolist(), float(logp[r]),
                         bool(self.stopped[r] and not done[r]), calls, int(self.declined[r]))


def _token_classes(vocab_size: int, trigger_ids, number_ids) -> np.ndarray:
    classes = np.zeros(vocab_size, np.int8)
    classes[np.asarray(list(trigger_ids), np.int64)] |= TRIGGER
    for key, bit in (("extends", EXTENDS_NUMBER), ("separator", SEPARATOR), ("digit", DIGIT)):
        classes[np.asarray(list((number_ids or {}).get(key, ())), np.int64)] |= bit
    return classes
