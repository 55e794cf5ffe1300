"""The decoder: batched greedy equals step-by-step argmax, one compile per bucket, data-parallel
decoding on 8 fake devices, seeded sampling, top-k / top-p support, stops; SmolLM2 greedy parity
with transformers' generate (slow)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

from flax import nnx

from cotjax import decode, model as model_lib
from cotjax.decode import SamplingConfig

EOS = 3
CFG = model_lib.ModelConfig(
    family="llama", vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=8, mlp_dim=64, norm_eps=1e-5, rope=model_lib.RopeConfig(10000.0),
    eos_token_ids=(EOS,))


@pytest.fixture(scope="module")
def tiny():
    # Scaled-up init so greedy paths vary (the default 0.02 init gives near-uniform logits).
    m = model_lib.create(CFG, seed=0)
    m.embed.set_value(m.embed[...] * 50)
    return m


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(4, CFG.vocab_size, size=n).tolist() for n in lengths]


def _reference_greedy(m, prompt, n, eos=(EOS,)):
    """A full causal forward pass per token (no cache, no padding before the prompt)."""
    graphdef, state = nnx.split(m)
    width = 64  # positions after the sequence are junk that causal attention never sees

    @jax.jit
    def next_logits(state, toks_1W, last):
        logits, _ = nnx.merge(graphdef, state)(toks_1W, jnp.arange(width)[None])
        return logits[0, last]

    toks, out = list(prompt), []
    for _ in range(n):
        buf = np.zeros((1, width), np.int32)
        buf[0, :len(toks)] = toks
        t = int(jnp.argmax(next_logits(state, jnp.asarray(buf), len(toks) - 1)))
        out.append(t)
        toks.append(t)
        if t in eos:
            break
    return out


def test_bucket_length():
    assert [decode.bucket_length(n) for n in (1, 16, 17, 33, 100, 256, 257, 600)] == [
        16, 16, 32, 64, 128, 256, 512, 768]


def test_batched_greedy_equals_unbatched_reference(tiny):
    prompts = _prompts([5, 1, 12, 7, 30, 9, 2])
    outs = decode.generate(tiny, prompts, max_new_tokens=12, batch_size=3)
    for p, o in zip(prompts, outs):
        assert o == _reference_greedy(tiny, p, 12)
    assert all(len(o) <= 12 for o in outs)


def test_chunked_prefill_equals_the_reference(tiny, monkeypatch):
    # Long prompts go through the cache PREFILL_CHUNK columns at a time: with chunks of 8, a
    # 32-column bucket is 4 passes. A max_new_tokens no other test uses, so the program is new.
    monkeypatch.setattr(decode, "PREFILL_CHUNK", 8)
    prompts = _prompts([30, 5, 17, 9], seed=3)
    outs = decode.generate(tiny, prompts, max_new_tokens=9, batch_size=4)
    assert outs == [_reference_greedy(tiny, p, 9) for p in prompts]


def test_eos_stops_a_row_and_is_kept(tiny):
    prompts = _prompts([4, 6, 8, 10], seed=1)
    free = decode.generate(tiny, prompts, max_new_tokens=10, eos_ids=(), batch_size=4)
    # Declare as EOS a token the first row emits mid-way: that row ends there, inclusive.
    eos = free[0][3]
    outs = decode.generate(tiny, prompts, max_new_tokens=10, eos_ids=(eos,), batch_size=4)
    for f, o in zip(free, outs):
        cut = f.index(eos) + 1 if eos in f else len(f)
        assert o == f[:cut]
    assert outs[0][-1] == eos and len(outs[0]) <= 4


def test_compiles_once_per_bucket(tiny):
    # A max_new_tokens no other test uses, so the jit caches start empty for it.
    kw = dict(max_new_tokens=7, batch_size=4, eos_ids=())
    before = dict(decode.TRACE_COUNTS)
    decode.generate(tiny, _prompts([3, 9, 16, 11, 5, 14, 2, 8, 13, 1]), **kw)  # bucket 16
    decode.generate(tiny, _prompts([4, 10, 6], seed=2), **kw)  # same bucket, short last batch
    delta = {k: decode.TRACE_COUNTS[k] - before.get(k, 0) for k in ("prefill", "extend")}
    assert delta == {"prefill": 1, "extend": 1}
    decode.generate(tiny, _prompts([17, 30]), **kw)  # a new bucket (32): one more of each
    delta = {k: decode.TRACE_COUNTS[k] - before.get(k, 0) for k in ("prefill", "extend")}
    assert delta == {"prefill": 2, "extend": 2}


def test_data_parallel_over_eight_devices(tiny):
    assert jax.device_count() == 8, "tests/conftest.py fakes 8 CPU devices"
    mesh = jax.make_mesh((8,), ("data",))
    prompts = _prompts([3, 7, 2, 9, 4, 11, 6, 5, 8, 10])
    single = decode.generate(tiny, prompts, max_new_tokens=8, batch_size=8)
    sharded = decode.generate(tiny, prompts, max_new_tokens=8, batch_size=8, mesh=mesh)
    assert sharded == single
    # The loop state really is split over the devices, one row each.
    graphdef, weights, spec, bs = decode._setup(tiny, (), 8, mesh, decode.GREEDY, 8)
    rows = jax.device_put(jnp.ones((8, 16), jnp.int32), NamedSharding(spec.mesh, P("data")))
    keys = jax.random.split(jax.random.key(0), 8)
    carry = decode._prefill(graphdef, weights, rows, jnp.full((8,), 16, jnp.int32), keys, spec=spec)
    assert carry.out_BN.sharding.spec[0] in ("data", ("data",))
    assert {s.data.shape for s in carry.cache.v_BKSH[0].addressable_shards} == {
        (1, CFG.num_kv_heads, 16 + 8, CFG.head_dim)}
    assert {s.data.shape for s in carry.cache.k_BKHS[0].addressable_shards} == {
        (1, CFG.num_kv_heads, CFG.head_dim, 16 + 8)}


def test_sampling_is_seeded_and_independent_of_batching(tiny):
    prompts = _prompts([5, 9, 3, 12, 7])
    s = SamplingConfig(temperature=1.0, top_k=20, top_p=0.9)
    a = decode.generate(tiny, prompts, max_new_tokens=10, sampling=s, seed=1, batch_size=4)
    b = decode.generate(tiny, prompts, max_new_tokens=10, sampling=s, seed=1, batch_size=2)
    c = decode.generate(tiny, prompts, max_new_tokens=10, sampling=s, seed=2, batch_size=4)
    assert a == b
    assert a != c
    # top_k=1 is greedy.
    greedy = decode.generate(tiny, prompts, max_new_tokens=10, batch_size=4)
    assert decode.generate(tiny, prompts, max_new_tokens=10, batch_size=4, seed=5,
                           sampling=SamplingConfig(temperature=0.7, top_k=1)) == greedy


def _allowed(logits, k, p):
    """Indices top-k then top-p may emit (ties with the k-th value count as inside)."""
    order = np.argsort(-logits, kind="stable")
    if k:
        kth = logits[order[k - 1]]
        order = order[logits[order] >= kth]
    x = logits[order] - logits[order].max()
    probs = np.exp(x) / np.exp(x).sum()
    before = np.cumsum(probs) - probs
    return set(order[before < p - 1e-6].tolist()) | set(order[:1].tolist()), set(
        order[before < p + 1e-6].tolist())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 12), p=st.floats(0.05, 1.0),
       temperature=st.floats(0.3, 2.0))
def test_top_k_top_p_never_leave_the_allowed_set(seed, k, p, temperature):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(4, 40)).astype(np.float32) * 3
    s = SamplingConfig(temperature=temperature, top_k=k, top_p=p)
    keys = jax.random.split(jax.random.key(seed), 4)
    draws = np.stack([np.asarray(decode._sample_jit(jnp.asarray(logits), keys, t, s))
                      for t in range(40)])
    for row in range(4):
        _, upper = _allowed(logits[row] / temperature, k, p)
        assert set(draws[:, row].tolist()) <= upper


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(-3, 3), min_size=7, max_size=7), min_size=1, max_size=5))
def test_argmax_picks_the_first_maximum_like_jnp(rows):
    x = jnp.asarray(rows, jnp.float32)  # few distinct values: ties are common
    assert decode.argmax(x).tolist() == jnp.argmax(x, axis=-1).tolist()


def test_top_p_keeps_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(np.asarray(decode.filter_logits(logits, SamplingConfig(1.0, 0, 0.75))))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.8
    kept = np.isfinite(np.asarray(decode.filter_logits(logits, SamplingConfig(1.0, 0, 0.1))))
    assert kept.tolist() == [[True, False, False, False]]  # the top token always stays
    kept = np.isfinite(np.asarray(decode.filter_logits(logits, SamplingConfig(1.0, 3, 1.0))))
    assert kept.tolist() == [[True, True, True, False]]


def test_host_stop_ends_rows_early(tiny):
    prompts = _prompts([4, 6, 8], seed=3)
    free = decode.generate(tiny, prompts, max_new_tokens=40, eos_ids=(), batch_size=4)
    target = free[1][5]
    calls = []

    def stop_fn(i, toks):
        calls.append(i)
        return target in toks

    outs = decode.generate(tiny, prompts, max_new_tokens=40, eos_ids=(), batch_size=4,
                           stop_fn=stop_fn, check_every=8)
    for f, o in zip(free, outs):
        assert o == f[:len(o)]  # a prefix of the unstopped continuation
    assert len(outs[1]) == 8  # found in the first chunk of 8: the chunk is kept, no more
    assert calls


def test_find_stop():
    assert decode.find_stop("a 5.\nQuestion: b\n\nc", ["\n\n", "\nQuestion:"]) == (4, "\nQuestion:")
    assert decode.find_stop("no stop", ["\nQ"]) == (7, None)


def test_rejects_empty_prompts(tiny):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        decode.generate(tiny, [[5], []], max_new_tokens=4)


# ----------------------------------------------------------------------------------------------
# SmolLM2 preset vs transformers


GSM8K = "data/gsm8k/train.jsonl"


SPEC = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    """(cotjax model, config, tokenizer, transformers model) of the SmolLM2 preset."""
    import torch
    import transformers

    from cotjax import weights

    model, cfg = weights.load_model(SPEC)
    path = weights.preset_path(SPEC)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    return model, cfg, weights.load_tokenizer(SPEC), hf


def _hf_greedy(hf, prompt_ids, n, eos):
    import torch

    with torch.no_grad():
        g = hf.generate(torch.tensor([prompt_ids]),
                        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                        do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=eos[0])
    return g[0, len(prompt_ids):].tolist()


@pytest.mark.one_device
@pytest.mark.slow
def test_greedy_matches_transformers_generate_on_smollm2(smollm2):
    """cotjax decodes 8 GSM8K prompts in batches of 4 (left padding, two length buckets);
    transformers decodes each prompt alone (no padding) with generate(do_sample=False).
    Both stop at the model's EOS ids; the new tokens must be identical."""
    model, cfg, tok, hf = smollm2
    with open(GSM8K) as f:
        questions = [json.loads(next(f))["question"] for _ in range(8)]
    prompts = [tok(f"Question: {q}\nAnswer:").input_ids for q in questions]
    n = 48
    ours = decode.generate(model, prompts, max_new_tokens=n, batch_size=4)
    for p, o in zip(prompts, ours):
        assert o == _hf_greedy(hf, p, n, list(cfg.eos_token_ids))


@pytest.mark.one_device
@pytest.mark.slow
def test_generate_cli_prints_the_transformers_continuation(smollm2):
    """`cotjax generate` prints only the continuation of the raw prompt: transformers' greedy
    tokens, decoded."""
    import subprocess
    import sys
    from pathlib import Path

    _, cfg, tok, hf = smollm2
    prompt = "Question: A farmer has 12 cows and buys 7 more. How many cows now?\nAnswer:"
    cli = Path(sys.executable).with_name("cotjax")
    out = subprocess.run([str(cli), "generate", f"--model={SPEC}", f"--prompt={prompt}",
                          "--max_new_tokens=24"], capture_output=True, text=True, check=True)
    new = _hf_greedy(hf, tok(prompt).input_ids, 24, list(cfg.eos_token_ids))
    if new and new[-1] in cfg.eos_token_ids:
        new = new[:-1]
    assert out.stdout == tok.decode(new, skip_special_tokens=True) + "\n"
