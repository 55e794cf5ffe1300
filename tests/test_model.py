"""Parity of the NNX decoder with transformers' PyTorch models on tiny random configs (fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cotjax import model as model_lib, weights
from cotjax.model import KVCache, ModelConfig

torch.manual_seed(0)

_COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)

# One tiny config per family, exercising its distinctive parts.
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**_COMMON, tie_word_embeddings=False),
    "llama3_rope": lambda: transformers.LlamaConfig(
        **_COMMON, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 32}),
    "smollm2_like": lambda: transformers.LlamaConfig(**_COMMON, tie_word_embeddings=True,
                                                     rope_parameters={"rope_type": "default",
                                                                      "rope_theta": 100000.0}),
    "mistral_sliding": lambda: transformers.MistralConfig(**_COMMON, sliding_window=5),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON, tie_word_embeddings=False),
    "qwen3": lambda: transformers.Qwen3Config(**_COMMON, head_dim=24),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **_COMMON, head_dim=32, sliding_window=4, layer_types=["sliding_attention", "full_attention",
                                                               "sliding_attention"],
        query_pre_attn_scalar=32, final_logit_softcapping=30.0),
}


def _hf_model(name):
    cfg = FAMILIES[name]()
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():  # make every parameter non-trivial, norms and biases included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval().float()


def _ours(hf_model, **overrides):
    cfg = ModelConfig.from_hf(hf_model.config.to_dict(), **overrides)
    tensors = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    return weights.model_from_params(cfg, weights.hf_to_params(tensors, cfg)), cfg


def _rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def _assert_logits_match_transformers(name, length, seed=0):
    hf = _hf_model(name)
    model, _ = _ours(hf)
    ids = np.random.default_rng(seed).integers(0, 160, size=(2, length))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    logits, _ = model(jnp.asarray(ids), jnp.broadcast_to(jnp.arange(length), (2, length)))
    assert _rel_err(logits, ref) <= 1e-4


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match_transformers(name):
    _assert_logits_match_transformers(name, 11)


@pytest.mark.parametrize("name", ["llama", "mistral_sliding", "gemma3"])
def test_causal_attention_by_query_blocks_matches_transformers(name, monkeypatch):
    """With Q_BLOCK 8, 32 tokens are 4 query blocks that skip the keys after their end."""
    monkeypatch.setattr(model_lib, "Q_BLOCK", 8)
    _assert_logits_match_transformers(name, 32, seed=2)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_packed_row_equals_separate_examples(name):
    """Two examples packed in one row give the logits each gives alone (no cross attention)."""
    model, _ = _ours(_hf_model(name))
    a, b = np.arange(3, 10), np.arange(20, 26)
    tokens = np.concatenate([a, b, [0, 0]])[None]
    seg = np.array([[1] * 7 + [2] * 6 + [0, 0]])
    pos = np.array([list(range(7)) + list(range(6)) + [0, 0]])
    packed, _ = model(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(seg))
    alone_a, _ = model(jnp.asarray(a[None]), jnp.arange(7)[None])
    alone_b, _ = model(jnp.asarray(b[None]), jnp.arange(6)[None])
    np.testing.assert_allclose(packed[0, :7], alone_a[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[0, 7:13], alone_b[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["qwen2", "gemma3"])
def test_cached_decoding_equals_full_forward(name):
    """Prefill then one token at a time through the KV cache reproduces the full forward pass."""
    model, cfg = _ours(_hf_model(name))
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 160, size=(2, 10)))
    pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
    full, _ = model(ids, pos)
    cache = KVCache.empty(cfg, batch=2, slots=16)
    prefill, cache = model(ids[:, :6], pos[:, :6], cache=cache)
    steps = [prefill]
    for t in range(6, 10):
        step, cache = model(ids[:, t:t + 1], pos[:, t:t + 1], cache=cache)
        steps.append(step)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-4)
    assert int(cache.index) == 10


def test_legacy_config_keys():
    """transformers 4.x config.json spellings (rope_theta, rope_scaling) parse the same."""
    legacy = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16,
                  num_hidden_layers=1, num_attention_heads=2, rope_theta=5e5,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    cfg = ModelConfig.from_hf(legacy)
    assert cfg.rope.kind == "llama3" and cfg.rope.theta == 5e5 and cfg.num_kv_heads == 2
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg


def test_unsupported_architecture_is_named():
    with pytest.raises(ValueError, match=r"model_type='gpt2'.*supported model types"):
        ModelConfig.from_hf({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})


def test_bf16_compute_stays_close():
    hf = _hf_model("llama")
    model, _ = _ours(hf, compute_dtype="bfloat16")
    ids = np.arange(12)[None]
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    logits, _ = model(jnp.asarray(ids), jnp.arange(12)[None])
    assert logits.dtype == jnp.float32
    assert _rel_err(logits, ref) < 3e-2


@pytest.mark.parametrize("name", ["llama", "mistral_sliding", "qwen3", "gemma3"])
def test_fused_attention_equals_the_reference_on_packed_rows(name):
    """attention='fused' (jax.nn.dot_product_attention; on this backend XLA's implementation,
    cuDNN's on GPUs) gives the reference path's logits and gradients on a packed row with
    padding, sliding windows included."""
    import jax
    from flax import nnx

    hf = _hf_model(name)
    if name == "gemma3":  # no logit soft-capping in the fused path; Gemma 3 has none in attention
        assert hf.config.attn_logit_softcapping is None
    ref, cfg = _ours(hf)
    fused = weights.model_from_params(cfg.replace(attention="fused"), weights.model_params(ref))
    tokens = jnp.asarray(np.concatenate([np.arange(3, 12), np.arange(20, 30), [0, 0, 0]])[None])
    seg = jnp.asarray([[1] * 9 + [2] * 10 + [0] * 3])
    pos = jnp.asarray([list(range(9)) + list(range(10)) + [0] * 3])
    with jax.default_matmul_precision("float32"):  # no TF32 on GPUs: this compares fp32 paths
        want, _ = ref(tokens, pos, seg)
        got, _ = fused(tokens, pos, seg)
    real = np.asarray(seg[0]) > 0
    np.testing.assert_allclose(np.asarray(got)[0, real], np.asarray(want)[0, real], rtol=1e-5,
                               atol=1e-5)

    def loss(m):
        return jnp.mean(m(tokens, pos, seg)[0][0, real] ** 2)

    with jax.default_matmul_precision("float32"):
        g_ref, g_fused = nnx.grad(loss)(ref), nnx.grad(loss)(fused)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_fused)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def _packed_row(lengths=(100, 90, 40), total=256, batch=1, seed=1):
    """Packed examples of these lengths, then padding to `total` tokens (default: two Splash
    blocks of 128); `batch` copies of the row."""
    pad = total - sum(lengths)
    seg = [sum(([i + 1] * n for i, n in enumerate(lengths)), []) + [0] * pad] * batch
    pos = [sum((list(range(n)) for n in lengths), []) + [0] * pad] * batch
    tokens = np.random.default_rng(seed).integers(1, 160, size=(batch, total))
    return jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(seg)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
@pytest.mark.parametrize("name", ["llama", "mistral_sliding", "qwen3", "gemma3"])
def test_cudnn_attention_equals_the_reference_in_bf16(name):
    """On a GPU, attention='fused' in bf16 runs cuDNN's flash attention (its custom call is in
    the compiled program) and lands as close to the fp32 reference as the bf16 reference path
    does, logits and gradients, on three packed examples and padding."""
    from flax import nnx

    hf = _hf_model(name)
    exact, cfg = _ours(hf)
    params = weights.model_params(exact)
    ref = weights.model_from_params(cfg.replace(compute_dtype="bfloat16"), params)
    fused = weights.model_from_params(cfg.replace(compute_dtype="bfloat16", attention="fused"),
                                      params)
    tokens, pos, seg = _packed_row((50, 40, 30), total=128, seed=0)
    real = np.asarray(seg[0]) > 0
    graph, state = nnx.split(fused)
    program = jax.jit(lambda st, t, p, s: nnx.merge(graph, st)(t, p, s)[0]).lower(
        state, tokens, pos, seg).compile().as_text()
    assert "__cudnn$fmha" in program

    def logits(m):
        return np.asarray(m(tokens, pos, seg)[0], np.float32)[0, real]

    def loss(m):
        return jnp.mean(m(tokens, pos, seg)[0][0, real].astype(jnp.float32) ** 2)

    want = logits(exact)
    assert _rel_err(logits(fused), want) <= max(2 * _rel_err(logits(ref), want), 1e-2)
    g_want, g_fused, g_ref = (jax.tree.leaves(nnx.grad(loss)(m)) for m in (exact, fused, ref))
    for a, b, c in zip(g_want, g_fused, g_ref):
        a, b, c = (np.asarray(x, np.float32) for x in (a, b, c))
        scale = np.linalg.norm(a) + 1e-12
        assert np.linalg.norm(b - a) / scale <= max(2 * np.linalg.norm(c - a) / scale, 2e-2)


@pytest.mark.parametrize("name", ["llama", "mistral_sliding", "qwen3", "gemma3"])
def test_splash_attention_equals_the_reference_on_packed_rows(name, monkeypatch):
    """attention='fused' on a TPU runs Splash (cotjax.splash): here the same kernel in Pallas's
    interpret mode gives the reference path's logits and gradients at the real positions of a
    packed row, sliding-window layers included (the window as a local mask)."""
    from flax import nnx

    from cotjax import splash

    monkeypatch.setattr(splash, "INTERPRET", True)
    hf = _hf_model(name)
    ref, cfg = _ours(hf)
    fused = weights.model_from_params(cfg.replace(attention="fused"), weights.model_params(ref))
    tokens, pos, seg = _packed_row()
    real = np.asarray(seg[0]) > 0
    graph, state = nnx.split(fused)
    program = jax.make_jaxpr(lambda st: nnx.merge(graph, st)(tokens, pos, seg)[0])(state)
    assert "pallas_call" in str(program)
    want, _ = ref(tokens, pos, seg)
    got, _ = fused(tokens, pos, seg)
    np.testing.assert_allclose(np.asarray(got)[0, real], np.asarray(want)[0, real], rtol=1e-5,
                               atol=1e-5)

    def loss(m):
        return jnp.mean(m(tokens, pos, seg)[0][0, real] ** 2)

    for a, b in zip(jax.tree.leaves(nnx.grad(loss)(ref)), jax.tree.leaves(nnx.grad(loss)(fused))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_splash_attention_runs_sharded_under_the_trainers_mesh(monkeypatch):
    """On several devices the kernel runs in shard_map over the mesh the Trainer makes current
    (batch over data x fsdp, kv heads over tensor): the same logits as one device's reference."""
    import ml_collections
    from flax import nnx

    from cotjax import sharding, splash

    if jax.device_count() < 8:
        pytest.skip("needs the 8 fake devices of the default test process")
    monkeypatch.setattr(splash, "INTERPRET", True)
    ref, cfg = _ours(_hf_model("llama"))
    fused = weights.model_from_params(cfg.replace(attention="fused"), weights.model_params(ref))
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
    tokens, pos, seg = _packed_row(batch=4)
    graph, state = nnx.split(fused)

    def forward(st, t, p, s):
        return nnx.merge(graph, st)(t, p, s)[0]

    rows = jax.device_put((tokens, pos, seg), sharding.batch_sharding(mesh))
    got = splash.under_mesh(jax.jit(forward), mesh)(state, *rows)
    with jax.set_mesh(mesh):
        assert "shard_map" in str(jax.make_jaxpr(forward)(state, *rows))
    assert "shard_map" not in str(jax.make_jaxpr(forward)(state, *rows))  # no mesh: one program
    want, _ = ref(tokens, pos, seg)
    real = np.asarray(seg) > 0
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-5,
                               atol=1e-5)
