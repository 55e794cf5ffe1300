"""The sampling engine (cotjax.engine): it draws what the static path draws for the same keys,
whatever the batch size, arrival order, devices or resume point; its sampler follows
softmax(logits / T) after top-k / top-p; its log-probabilities are the model's."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from flax import nnx

from cotjax import decode, engine, model as model_lib
from cotjax.decode import SamplingConfig
from cotjax.engine import Request

EOS = 3
CFG = model_lib.ModelConfig(
    family="llama", vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=8, mlp_dim=64, norm_eps=1e-5, rope=model_lib.RopeConfig(10000.0),
    eos_token_ids=(EOS,))
SAMPLED = SamplingConfig(temperature=1.0, top_k=30, top_p=0.95)


@pytest.fixture(scope="module")
def tiny():
    m = model_lib.create(CFG, seed=0)
    m.embed.set_value(m.embed[...] * 50)  # peaked logits, so EOS ends some rows early
    return m


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(4, CFG.vocab_size, size=n).tolist() for n in lengths]


def _engine(model, prompts, k, **kw):
    reqs = [Request(p, prompt, range(k)) for p, prompt in enumerate(prompts)]
    return {(s.problem, s.sample): s for s in engine.sample(model, reqs, **kw)}


def _static(model, prompts, k, *, seed, **kw):
    """The static path on repeated prompts, with the engine's per-(problem, sample) keys."""
    pairs = [(p, s) for p in range(len(prompts)) for s in range(k)]
    keys = decode.sample_keys(seed, [p for p, _ in pairs], [s for _, s in pairs])
    outs = decode.generate(model, [prompts[p] for p, _ in pairs], keys=keys, seed=seed, **kw)
    return dict(zip(pairs, outs))


def test_greedy_equals_the_static_path_exactly(tiny):
    prompts = _prompts([5, 9, 3, 12, 7, 2, 15])
    kw = dict(max_new_tokens=12)
    got = _engine(tiny, prompts, 1, batch_size=3, check_every=4, **kw)
    want = _static(tiny, prompts, 1, seed=0, batch_size=4, **kw)
    assert {k: s.tokens for k, s in got.items()} == want
    lengths = [len(t) for t in want.values()]
    assert min(lengths) < max(lengths), "some rows must end early, so rows get refilled"


def test_sampled_rows_equal_the_static_path_with_the_same_keys(tiny):
    # Exact in fp32 here: a row's arithmetic does not depend on its neighbours, and the only
    # difference, masked cache slots, adds exact zeros to the softmax sums. (Should a backend
    # reorder those sums, a draw could flip where two tokens' cumulative mass ties to 1e-7.)
    prompts = _prompts([4, 11, 6, 8, 3])
    kw = dict(max_new_tokens=10, sampling=SAMPLED)
    got = _engine(tiny, prompts, 4, batch_size=5, seed=7, check_every=3, **kw)
    want = _static(tiny, prompts, 4, seed=7, batch_size=8, **kw)
    assert {k: s.tokens for k, s in got.items()} == want
    assert len({tuple(t) for t in want.values()}) > len(prompts), "samples of a problem differ"


def test_samples_do_not_depend_on_batch_size_order_or_resume_point(tiny):
    prompts = _prompts([6, 2, 9, 5])
    kw = dict(max_new_tokens=9, sampling=SAMPLED, seed=3)
    full = {k: s.tokens for k, s in _engine(tiny, prompts, 3, batch_size=4, **kw).items()}
    assert {k: s.tokens for k, s in _engine(tiny, prompts, 3, batch_size=7, **kw).items()} == full
    # Arrival order reversed and a resume that asks only for the samples still missing.
    missing = [Request(p, prompts[p], [s for s in range(3) if (p + s) % 2])
               for p in reversed(range(len(prompts)))]
    resumed = {(s.problem, s.sample): s.tokens for s in engine.sample(tiny, missing, batch_size=2,
                                                                      **kw)}
    assert resumed == {k: v for k, v in full.items() if sum(k) % 2}


def test_fixed_prompt_slots_compile_once_for_growing_prompts(tiny):
    """`prompt_slots_min` (beam search's calls, one per depth): calls with longer prompts and
    other numbers of requests reuse the first call's programs, and draw the same samples."""
    kw = dict(max_new_tokens=7, sampling=SAMPLED, seed=5, batch_size=6, prompt_slots_min=40)
    calls = [_prompts([3]), _prompts([9, 14], seed=1), _prompts([21, 5, 30], seed=2)]
    before = dict(decode.TRACE_COUNTS)
    for prompts in calls:
        got = {k: s.tokens for k, s in _engine(tiny, prompts, 2, **kw).items()}
        free = {k: s.tokens for k, s in _engine(tiny, prompts, 2, **{
            **kw, "prompt_slots_min": 0, "batch_size": 4}).items()}
        assert got == free
    traced = {k: decode.TRACE_COUNTS[k] - before.get(k, 0)
              for k in ("engine_prefill", "engine_refill", "engine_extend")}
    # one program each at 48 slots (the fixed calls), and each free call's own shapes besides
    fixed = dict(decode.TRACE_COUNTS)
    for prompts in calls:
        list(engine.sample(tiny, [Request(0, prompts[0], range(2))], **kw))
    assert {k: decode.TRACE_COUNTS[k] - fixed[k] for k in traced} == dict.fromkeys(traced, 0)
    assert all(n >= 2 for n in traced.values()), traced


def test_rows_shard_over_eight_devices(tiny):
    mesh = jax.make_mesh((8,), ("data",))
    prompts = _prompts([3, 7, 2, 9, 4, 11])
    kw = dict(max_new_tokens=8, sampling=SAMPLED, seed=1)
    single = {k: s.tokens for k, s in _engine(tiny, prompts, 3, batch_size=8, **kw).items()}
    sharded = {k: s.tokens for k, s in _engine(tiny, prompts, 3, batch_size=8, mesh=mesh,
                                                **kw).items()}
    assert sharded == single


def test_logprob_is_the_models_sum_over_the_sample(tiny):
    graphdef, state = nnx.split(tiny)
    [prompt] = _prompts([6], seed=4)
    got = _engine(tiny, [prompt], 2, max_new_tokens=8, sampling=SAMPLED, seed=2, batch_size=2)
    for s in got.values():
        seq = prompt + s.tokens
        logits, _ = nnx.merge(graphdef, state)(jnp.asarray([seq]), jnp.arange(len(seq))[None])
        lp = jax.nn.log_softmax(logits[0], axis=-1)
        want = sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(s.tokens))
        assert s.logprob == pytest.approx(want, abs=1e-4)


def test_host_stop_ends_a_row_and_says_so(tiny):
    prompts = _prompts([5, 8])
    free = _engine(tiny, prompts, 1, max_new_tokens=16, batch_size=2)
    stop_at = {p: free[(p, 0)].tokens[3] for p in range(2)}  # stop once this token appears
    got = _engine(tiny, prompts, 1, max_new_tokens=16, batch_size=2, check_every=2,
                  stop_fn=lambda p, toks: stop_at[p] in toks)
    for p in range(2):
        s = got[(p, 0)]
        assert s.stopped and stop_at[p] in s.tokens
        assert s.tokens == free[(p, 0)].tokens[:len(s.tokens)]


def test_bad_requests_are_refused(tiny):
    with pytest.raises(ValueError, match="problem 4: empty prompt"):
        list(engine.sample(tiny, [Request(4, [], [0])], max_new_tokens=4))
    with pytest.raises(ValueError, match="problem 1: sample 0 requested twice"):
        list(engine.sample(tiny, [Request(1, [5], [0]), Request(1, [5], [0])], max_new_tokens=4))
    with pytest.raises(ValueError, match=r"wait_share must be in \[0, 1\], got 1.5"):
        list(engine.sample(tiny, [Request(1, [5], [0])], max_new_tokens=4, wait_share=1.5))


def _expected_probs(logits, temperature, k, p):
    """softmax(logits / T) restricted to top-k then top-p, renormalised (numpy reference)."""
    z = logits / temperature
    order = np.argsort(-z, kind="stable")
    keep = np.zeros_like(z, bool)
    kk = k if 0 < k < len(z) else len(z)
    probs_sorted = np.exp(z[order[:kk]] - z[order[0]])
    probs_sorted /= probs_sorted.sum()
    before = np.cumsum(probs_sorted) - probs_sorted
    keep[order[:kk][before < p]] = True
    out = np.where(keep, np.exp(z - z.max()), 0.0)
    return out / out.sum()


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), temperature=st.sampled_from([0.5, 1.0, 1.7]),
       k=st.sampled_from([0, 3, 6]), p=st.sampled_from([1.0, 0.8]))
def test_draws_follow_the_filtered_softmax(seed, temperature, k, p):
    """A goodness-of-fit test on an 8-token vocabulary: 6000 draws, chi-square p > 1e-4 (a
    sampler that returned the top token, ignored T or leaked filtered tokens fails it)."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=8) * 1.5).astype(np.float32)
    s = SamplingConfig(temperature=temperature, top_k=k, top_p=p)
    n = 6000
    keys = decode.sample_keys(seed % 1000, np.arange(n), np.zeros(n))
    toks = np.asarray(decode._sample_jit(jnp.tile(jnp.asarray(logits), (n, 1)), keys, 0, s))
    want = _expected_probs(logits.astype(np.float64), temperature, k, p)
    counts = np.bincount(toks, minlength=8)
    assert counts[want == 0].sum() == 0, "a filtered token was drawn"
    kept = want > 0
    if kept.sum() > 1:
        chi2 = stats.chisquare(counts[kept], want[kept] * n)
        assert chi2.pvalue > 1e-4, (counts, want * n)
    # and the sampler is not greedy: with T >= 0.5 and >1 kept tokens, more than one appears
    assert (counts > 0).sum() == kept.sum() or kept.sum() == 1 or want[kept].min() * n < 5


def test_token_keys_follow_the_sample_not_the_step():
    """Token j of a sample draws with fold_in(sample key, j), whatever the row's global step."""
    logits = jnp.zeros((2, 50))
    keys = decode.sample_keys(0, [5, 5], [1, 1])
    a = decode._sample_jit(logits, keys, jnp.asarray([3, 4]), SAMPLED)
    b = decode._sample_jit(logits, keys, 3, SAMPLED)
    c = decode._sample_jit(logits, keys, 4, SAMPLED)
    assert int(a[0]) == int(b[0]) and int(a[1]) == int(c[1])
    counter = collections.Counter(int(decode._sample_jit(logits, keys, j, SAMPLED)[0])
                                  for j in range(30))
    assert len(counter) > 10


# ----------------------------------------------------------------------------------------------
# The tool hook


def test_a_hook_that_never_fires_leaves_the_output_token_identical(tiny):
    prompts = _prompts([5, 9, 3, 7])
    kw = dict(max_new_tokens=12, sampling=SAMPLED, seed=4, batch_size=3, check_every=5)
    plain = _engine(tiny, prompts, 2, **kw)
    calls = []

    def hook(problem, tokens):
        calls.append((problem, list(tokens)))
        return None

    triggers = list(range(40, 60))
    hooked = _engine(tiny, prompts, 2, hook=hook, trigger_ids=triggers, **kw)
    assert {k: s.tokens for k, s in hooked.items()} == {k: s.tokens for k, s in plain.items()}
    assert sum(s.declined for s in hooked.values()) == len(calls) > 0
    for problem, tokens in calls:  # the hook saw each row exactly at its trigger token
        assert tokens[-1] in triggers


def test_rows_wait_at_triggers_without_changing_any_sample(tiny):
    """With many rows a round answers several triggers at once: a row that emitted one waits,
    the others decode on. Waiting changes no sample: every batch size (so every pattern of
    waits) gives the same tokens and insertions, and the hook sees each row at its trigger."""
    prompts = _prompts([5, 9, 3, 7, 4, 6, 8, 2])
    triggers = list(range(4, 97, 3))
    kw = dict(max_new_tokens=24, sampling=SAMPLED, seed=7, eos_ids=(), trigger_ids=triggers)
    seen = []

    def hook(problem, tokens):
        seen.append(tokens[-1])
        return ([11, 12], {"n": len(tokens)}) if len(tokens) % 3 == 0 else None

    runs = {}
    # (2, 1/8): one row waits at most, as share 0; (3, 1) and (4, 1/2): rows wait and rows are
    # refilled (16 samples); 16 rows hold every sample at once.
    for rows, share in ((2, 0.125), (3, 1.0), (4, 0.5), (16, 0.0), (16, 0.5)):
        stats = collections.Counter()
        got = _engine(tiny, prompts, 2, batch_size=rows, hook=hook, stats=stats,
                      wait_share=share, **kw)
        runs[rows, share] = (
            {k: (s.tokens, s.interventions, s.declined) for k, s in got.items()}, stats)
    assert all(r[0] == runs[2, 0.125][0] for r in runs.values())
    assert set(seen) <= set(triggers)
    assert sum(len(i) for _, i, _ in runs[2, 0.125][0].values()) > 0, "no insertion to test"
    every, half = runs[16, 0.0][1], runs[16, 0.5][1]
    assert every["waits"] == 0 and half["waits"] > 0 and runs[4, 0.5][1]["waits"] > 0
    assert half["rounds"] < every["rounds"] and half["rounds"] < half["hook_calls"]
    assert half["steps"] >= every["steps"] > 0
    stats = collections.Counter()  # a caller that stops early still gets the device's counts
    reqs = [Request(p, prompt, range(2)) for p, prompt in enumerate(prompts)]
    gen = engine.sample(tiny, reqs, batch_size=16, hook=hook, stats=stats, **kw)
    next(gen)
    gen.close()
    assert stats["steps"] > 0 and "waits" in stats


def test_with_a_hook_a_rows_stop_check_waits_for_check_every_new_tokens(tiny):
    """With few rows a hook ends a round at about every trigger; a row's stop check still
    waits for `check_every` new tokens (counted afresh for each occupant of a row), the row
    stops at the first check that says so, and `stats` counts what the host did."""
    prompts = _prompts([5, 9, 3, 7, 4, 6])  # 6 problems on 3 rows: rows are refilled
    kw = dict(max_new_tokens=30, sampling=SAMPLED, seed=4, batch_size=3, check_every=6,
              eos_ids=())
    triggers, hook_calls, asked = list(range(4, 97, 2)), [], collections.defaultdict(list)

    def hook(problem, tokens):
        hook_calls.append(problem)
        return None

    def stop(problem, tokens):
        asked[problem].append(len(tokens))
        return len(tokens) >= 10

    stats = collections.Counter()
    got = _engine(tiny, prompts, 1, hook=hook, trigger_ids=triggers, stop_fn=stop,
                  stats=stats, **kw)
    free = _engine(tiny, prompts, 1, **kw)
    assert stats["rounds"] > 30 // 6 + 1, "the hook must have cut rounds short for this test"
    assert stats["hook_calls"] == len(hook_calls) > 0
    assert stats["stop_checks"] == sum(map(len, asked.values()))
    assert sorted(asked) == list(range(6))
    for p, lengths in asked.items():
        gaps = [b - a for a, b in zip([0, *lengths], lengths)]
        assert all(6 <= g < 12 for g in gaps), (p, lengths)  # the first one too: reset on refill
        s = got[(p, 0)]
        assert s.stopped and lengths[-1] == len(s.tokens) >= 10 > lengths[-2]
        assert s.tokens == free[(p, 0)].tokens[:len(s.tokens)]


def test_forced_tokens_enter_the_cache_as_a_prefill_of_the_same_text(tiny):
    [prompt] = _prompts([6], seed=5)
    free = _engine(tiny, [prompt], 1, max_new_tokens=14, eos_ids=())[(0, 0)].tokens
    trigger = free[2]  # fires at the third token (and wherever it recurs)
    insert = [11, 12, 13]

    def hook(problem, tokens):
        return (insert, {"why": "test"}) if len(tokens) < 6 else None

    got = _engine(tiny, [prompt], 1, max_new_tokens=14, eos_ids=(), hook=hook,
                  trigger_ids=[trigger])[(0, 0)]
    at = free.index(trigger) + 1
    assert got.tokens[:at] == free[:at] and got.tokens[at:at + 3] == insert
    [first] = got.interventions
    assert first["at"] == at and first["forced"] == insert and first["why"] == "test"
    # The continuation after the forced tokens is what a fresh decode of the same text gives:
    # the forced tokens' keys and values are those a prefill of that text would have cached.
    head = prompt + got.tokens[:at + 3]
    fresh = decode.generate(tiny, [head], max_new_tokens=14 - at - 3, eos_ids=())[0]
    rest = got.tokens[at + 3:]
    later = [c["at"] for c in got.interventions[1:]]
    cut = (later[0] - at - 3) if later else len(rest)
    assert rest[:cut] == fresh[:cut]
    # `model`: the model's own argmax at each forced position, given the text before it
    graphdef, state = nnx.split(tiny)
    seq = prompt + got.tokens
    logits, _ = nnx.merge(graphdef, state)(jnp.asarray([seq]), jnp.arange(len(seq))[None])
    own = [int(jnp.argmax(logits[0, len(prompt) + at - 1 + j])) for j in range(3)]
    assert first["model"] == own


def test_a_hook_asking_for_too_many_tokens_is_refused(tiny):
    [prompt] = _prompts([6], seed=5)
    free = _engine(tiny, [prompt], 1, max_new_tokens=8, eos_ids=())[(0, 0)].tokens
    with pytest.raises(ValueError, match="hook: 20 tokens to force; 1 to 16 are allowed"):
        _engine(tiny, [prompt], 1, max_new_tokens=8, eos_ids=(), trigger_ids=[free[2]],
                hook=lambda p, t: (list(range(4, 24)), {}))


def test_a_forced_value_is_not_extended(tiny):
    """After forced tokens the next token is none of `extends`; after a `separator` there, no
    `digit` (the calculator's "= 6" must not become "= 6.40")."""
    [prompt] = _prompts([6], seed=5)
    free = _engine(tiny, [prompt], 1, max_new_tokens=14, eos_ids=())[(0, 0)].tokens
    insert = [11, 12]
    hook = lambda p, t: (insert, {}) if len(t) < 4 else None  # noqa: E731
    plain = _engine(tiny, [prompt], 1, max_new_tokens=14, eos_ids=(), hook=hook,
                    trigger_ids=[free[2]])[(0, 0)].tokens
    at = plain.index(free[2]) + 1 + len(insert)
    follower = plain[at]  # what follows the forced value without the rule
    ids = dict(extends=[follower, 20, 21], separator=[], digit=[])
    got = _engine(tiny, [prompt], 1, max_new_tokens=14, eos_ids=(), hook=hook,
                  trigger_ids=[free[2]], number_ids=ids)[(0, 0)].tokens
    assert got[:at] == plain[:at] and got[at] not in ids["extends"]
    # with that token a separator, the token after it may not be a digit
    second = got[at + 1]
    ids = dict(extends=[follower], separator=[got[at]], digit=[second])
    again = _engine(tiny, [prompt], 1, max_new_tokens=14, eos_ids=(), hook=hook,
                    trigger_ids=[free[2]], number_ids=ids)[(0, 0)].tokens
    assert again[:at + 1] == got[:at + 1] and again[at + 1] != second
