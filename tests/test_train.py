"""Training: loss normalisation, micro-batching, one compile, non-finite handling, learning."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from cotjax import model as model_lib
from cotjax import sharding as sharding_lib
from cotjax import load, train
from cotjax.loss import CoTLoss

from _train_utils import tiny_config, write_byte_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_byte_tokenizer(tmp_path_factory.mktemp("tok") / "bytes")


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tok_dir)


def _cfg():
    return load._random_model_config(tiny_config("unused"))


def _batches(config, tokenizer, n):
    data = train.RunData(config)
    it = data.train_iterator(tokenizer)
    return [next(it) for _ in range(n)]


def _mesh(shape):
    n = int(np.prod(shape))
    return sharding_lib.make_mesh(
        type("M", (), dict(zip(sharding_lib.MESH_AXES, shape)))(), jax.devices()[:n])


def test_tagged_kinds_recover_real_weights(tok_dir, tokenizer):
    config = tiny_config(tok_dir)
    config.data.w_chain = 0.5
    config.data.w_answer = 1.5
    tagged = _batches(config, tokenizer, 1)[0]
    from cotjax import pipeline
    plain = next(pipeline.make_train_iterator(config, tokenizer))
    np.testing.assert_array_equal(tagged["inputs"], plain["inputs"])
    np.testing.assert_array_equal(tagged["weights"], plain["weights"])
    kinds = tagged["kinds"]
    assert set(np.unique(kinds)) == {0, 1, 2}
    assert np.all(plain["weights"][kinds == 1] == 0.5)
    assert np.all(plain["weights"][kinds == 2] == 1.5)
    assert np.all(plain["weights"][kinds == 0] == 0)


def test_loss_matches_manual_cross_entropy(tok_dir, tokenizer):
    config = tiny_config(tok_dir)
    cfg = _cfg()
    batch = _batches(config, tokenizer, 1)[0]
    model = model_lib.create(cfg, 0)
    logits, _ = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    ce = -np.take_along_axis(np.asarray(logp), batch["targets"][..., None], -1)[..., 0]
    w = batch["weights"]
    expected = (w * ce).sum() / w.sum()
    trainer = train.Trainer(cfg, train.TrainSpec(steps=4), _mesh((1, 1, 1)), 4)
    params = nnx.to_pure_dict(nnx.state(model))
    sums, _ = trainer.grads(params, batch)
    got = CoTLoss().summarize(jax.device_get(sums))
    np.testing.assert_allclose(got["loss"], expected, rtol=1e-5)
    chain = batch["kinds"] == 1
    np.testing.assert_allclose(got["chain_loss"], ce[chain].mean(), rtol=1e-5)
    answer = batch["kinds"] == 2
    np.testing.assert_allclose(got["answer_loss"], ce[answer].mean(), rtol=1e-5)
    hits = np.argmax(np.asarray(logits), -1) == batch["targets"]
    np.testing.assert_allclose(got["answer_acc"], hits[answer].mean(), rtol=1e-6)


def test_microbatches_give_the_same_gradients(tok_dir, tokenizer):
    config = tiny_config(tok_dir)
    cfg = _cfg()
    batch = _batches(config, tokenizer, 1)[0]
    mesh = _mesh((2, 2, 1))
    params = load.init_random_params(cfg, 0, mesh)
    out = []
    for m in (1, 2):
        trainer = train.Trainer(cfg, train.TrainSpec(steps=4, microbatches=m), mesh, 4)
        sums, grads = trainer.grads(params, batch)
        out.append((CoTLoss().summarize(jax.device_get(sums)), jax.device_get(grads)))
    assert out[0][0]["loss"] == pytest.approx(out[1][0]["loss"], rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 out[0][1], out[1][1])


def test_step_compiles_once_and_learns(tok_dir, tokenizer):
    config = tiny_config(tok_dir)
    cfg = _cfg()
    mesh = _mesh((2, 2, 2))
    steps = 12
    trainer = train.Trainer(cfg, train.TrainSpec(steps=steps, lr=3e-3, warmup_steps=2), mesh,
                            steps)
    params = load.init_random_params(cfg, 0, mesh)
    state = trainer.init_train_state(params, 0)
    losses = []
    for batch in _batches(config, tokenizer, steps):
        params, state, metrics = trainer.step(params, state, batch)
        losses.append(float(metrics["loss"]))
    assert trainer.trace_count == 1
    assert trainer._step._cache_size() == 1
    assert int(state["step"]) == steps
    assert losses[-1] < losses[0] - 0.3, losses
    # the params stay sharded by the rules table
    assert params["layers"]["wq"].sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor")


def test_splash_attention_trains_on_a_mesh_as_the_reference_does(tok_dir, tokenizer, monkeypatch):
    """attention='fused' where Splash runs (a TPU; here its interpret mode): the Trainer makes
    its mesh current, the kernel runs in shard_map over it, and the gradients on a (2, 2, 2)
    mesh are the reference path's."""
    from cotjax import splash

    monkeypatch.setattr(splash, "INTERPRET", True)
    config = tiny_config(tok_dir)
    config.data.seq_len = 256  # two Splash blocks, several packed examples per row
    cfg = _cfg()
    batch = _batches(config, tokenizer, 1)[0]
    assert batch["segment_ids"].max() > 1
    mesh = _mesh((2, 2, 2))
    params = load.init_random_params(cfg, 0, mesh)
    out = []
    for attention in ("reference", "fused"):
        trainer = train.Trainer(cfg.replace(attention=attention), train.TrainSpec(steps=4), mesh, 4)
        sums, grads = trainer.grads(params, batch)
        out.append((CoTLoss().summarize(jax.device_get(sums)), jax.device_get(grads)))
    assert out[0][0]["loss"] == pytest.approx(out[1][0]["loss"], rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 out[0][1], out[1][1])


def test_weight_decay_mask_skips_norms_and_biases():
    cfg = _cfg().replace(qkv_bias=True, mlp_bias=True)
    shapes, _ = load.abstract_params(cfg)
    mask = train.decay_mask(shapes)
    assert mask["embed"] and mask["lm_head"] and mask["layers"]["wq"]
    assert not mask["final_norm"] and not mask["layers"]["attn_norm"]
    assert not mask["layers"]["bq"] and not mask["layers"]["b_up"]


def test_schedule_warmup_then_decay():
    spec = train.TrainSpec(lr=1.0, warmup_steps=10, schedule="cosine", end_lr_fraction=0.1)
    sched = train.make_schedule(spec, 110)
    assert float(sched(0)) == 0.0
    assert float(sched(10)) == pytest.approx(1.0)
    assert float(sched(110)) == pytest.approx(0.1, abs=1e-6)
    lin = train.make_schedule(train.TrainSpec(lr=1.0, schedule="linear", end_lr_fraction=0.0), 10)
    assert float(lin(5)) == pytest.approx(0.5)


def test_nonfinite_stops_naming_the_step(tok_dir, tmp_path):
    config = tiny_config(tok_dir, steps=8, lr=1e30, grad_clip=0.0, warmup_steps=0,
                         schedule="constant")
    with pytest.raises(FloatingPointError, match=r"at step \d+"):
        train.train(config, tmp_path / "stop")


def test_nonfinite_skip_counts_and_keeps_params_finite(tok_dir, tmp_path):
    config = tiny_config(tok_dir, steps=6, lr=1e30, grad_clip=0.0, warmup_steps=0,
                         schedule="constant", on_nonfinite="skip")
    result = train.train(config, tmp_path / "skip")
    assert result.step == 6 and result.skipped > 0
    model, *_ = load.load_run_model(tmp_path / "skip")
    leaves = jax.tree.leaves(nnx.state(model))
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)


def test_train_writes_metrics_and_resumes(tok_dir, tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config(tok_dir, steps=4, checkpoint_every=2, eval_every=2)
    result = train.train(config, workdir)
    assert result.step == 4 and not result.stopped_by_signal
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    for k in ("loss", "chain_loss", "answer_loss", "answer_acc", "grad_norm", "lr",
              "tokens_per_s", "nonpad_frac", "mfu", "mfu_causal", "val/loss", "val/answer_acc"):
        assert k in keys, k
    # the causal packed count needs at most about half the full square's attention
    timed = [r for r in rows if "mfu_causal" in r]
    assert timed and all(0 < r["mfu_causal"] < r["mfu"] for r in timed)
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    assert (workdir / "config.json").is_file() and (workdir / "model_config.json").is_file()
    config.train.steps = 6
    result = train.train(config, workdir)
    assert result.step == 6
    steps = [r["step"] for r in
             (json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert 5 in steps and 1 not in steps[steps.index(4) + 1:]  # continued from 4, not restarted
    # A rerun of the finished run (resumable experiment scripts do this) adds nothing.
    before = (workdir / "metrics.jsonl").read_text()
    assert train.train(config, workdir).step == 6
    assert (workdir / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_synthetic_task_loss_down_answer_accuracy_up(tok_dir, tmp_path):
    config = tiny_config(tok_dir, steps=150, lr=3e-3, warmup_steps=10, log_every=25,
                         eval_every=0)
    config.model_arch.d_model = 64
    config.model_arch.mlp_dim = 128
    config.mesh.data = 1
    result = train.train(config, tmp_path / "learn", mesh=_mesh((1, 1, 1)))
    rows = [json.loads(line) for line in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]
    first, last = rows[0], rows[-1]
    assert last["loss"] < 0.5 * first["loss"], (first, last)
    assert last["answer_acc"] > first["answer_acc"] + 0.3, (first, last)
    assert result.val_metrics["answer_acc"] > 0.5


class _Tempered(nnx.Module):
    """The decoder with a learned logit temperature: a model the Trainer has never seen."""

    def __init__(self, cfg, rngs):
        self.decoder = model_lib.Decoder(cfg, rngs)
        self.temperature = nnx.Param(jnp.ones(()), logical_axes=())

    def __call__(self, inputs, positions, segment_ids):
        logits, cache = self.decoder(inputs, positions, segment_ids)
        return logits / self.temperature[...], cache


class _AnswerOnlyLoss(CoTLoss):
    """Another objective through the seam: cross-entropy on answer tokens alone."""

    def sums(self, model, batch):
        weights = (batch["kinds"] == 2).astype(jnp.float32)
        return super().sums(model, {**batch, "weights": weights})


def test_trainer_takes_the_model_and_the_objective_as_seams(tok_dir, tokenizer):
    config = tiny_config(tok_dir)
    cfg = _cfg()
    batch = _batches(config, tokenizer, 1)[0]
    abstract = nnx.eval_shape(lambda: _Tempered(cfg, nnx.Rngs(0)))
    trainer = train.Trainer(cfg, train.TrainSpec(steps=2, lr=1e-2), _mesh((1, 1, 1)), 2,
                            objective=_AnswerOnlyLoss(), abstract_model=abstract)
    params = nnx.to_pure_dict(nnx.state(_Tempered(cfg, nnx.Rngs(0))))
    sums, _ = trainer.grads(params, batch)
    got = _AnswerOnlyLoss().summarize(jax.device_get(sums))
    np.testing.assert_allclose(got["loss"], got["answer_loss"], rtol=1e-6)  # the seam's loss
    state = trainer.init_train_state(params, 0)
    params, state, metrics = trainer.step(params, state, batch)
    assert abs(float(params["temperature"]) - 1.0) > 1e-4  # the new parameter trained
    assert bool(metrics["ok"])


def test_causal_packed_flops_match_a_hand_count():
    from cotjax import metrics
    from cotjax.model import ModelConfig, RopeConfig

    seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]])
    assert float(metrics.attention_pairs(seg)) == (3 * 4 / 2 + 2 * 3 / 2) + 4 * 5 / 2 == 19
    cfg = ModelConfig(family="llama", vocab_size=10, d_model=4, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=2, mlp_dim=8, norm_eps=1e-5,
                      rope=RopeConfig(10000.0))
    # N = L (D N H + 2 D K H + N H D + 3 D F) + D V = (16 + 16 + 16 + 96) + 40
    assert metrics.matmul_params(cfg) == 184
    assert metrics.causal_flops(cfg, real_tokens=9, pairs=19) == 6 * 184 * 9 + 12 * 2 * 2 * 19
    # one unpadded example filling a row of T tokens: (T + 1) / 2T of the full square's attention
    T = 6
    full = metrics.flops_per_token(cfg, T) * T - 6 * 184 * T
    causal = metrics.causal_flops(cfg, T, float(metrics.attention_pairs(np.ones((1, T), int))))
    assert causal - 6 * 184 * T == full * (T + 1) / (2 * T)


def test_lora_flops_count_no_weight_gradients_for_the_frozen_base():
    from cotjax import lora, metrics
    from cotjax.model import ModelConfig, RopeConfig

    cfg = ModelConfig(family="llama", vocab_size=10, d_model=4, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=2, mlp_dim=8, norm_eps=1e-5,
                      rope=RopeConfig(10000.0),
                      lora=lora.LoraSpec(rank=2, alpha=4.0, targets=("wq", "w_down")))
    # adapters: r (D + N H) for wq + r (F + D) for w_down = 2 (4 + 4) + 2 (8 + 4) = 40
    assert metrics.adapter_params(cfg) == 40
    assert metrics.dense_flops(cfg) == 4 * 184 + 6 * 40
    assert metrics.causal_flops(cfg, real_tokens=9, pairs=19) == (4 * 184 + 6 * 40) * 9 \
        + 12 * 2 * 2 * 19


@pytest.mark.parametrize("T, chunk, caps", [
    (128, 0, (16, 32, 48, 64, 80, 96, 112, 128)),
    (128, 32, (32, 64, 96, 128)),  # whole chunks
    (512, 8, tuple(range(64, 513, 64))),  # T/8 is a multiple of the chunk
    (100, 0, (100,)),  # no T/8 steps: the whole row
])
def test_target_capacities_end_at_the_row_and_hold_whole_chunks(T, chunk, caps):
    from cotjax.loss import target_capacities
    assert target_capacities(T, chunk) == caps


def test_target_index_puts_each_rows_loss_positions_first_and_cuts_to_the_fullest_row():
    from cotjax.loss import target_index
    kinds = np.array([[0, 0, 1, 1, 2, 0, 0, 0], [0, 1, 0, 2, 0, 0, 0, 0]])
    batch = {"kinds": kinds, "weights": (kinds > 0).astype(np.float32)}
    np.testing.assert_array_equal(target_index(batch),  # T / 8 = 1: capacity 3, the fullest row
                                  [[2, 3, 4], [1, 3, 0]])
    assert target_index(batch, chunk=4).shape == (2, 4)  # whole chunks
    assert target_index(batch, need=7).shape == (2, 7)  # another process's fuller row
    none = {"kinds": np.zeros((1, 8), int), "weights": np.zeros((1, 8), np.float32)}
    assert target_index(none).shape == (1, 1)
    with pytest.raises(ValueError, match="no target_index"):
        cfg = load._random_model_config(tiny_config("unused"))
        CoTLoss(0, targets_only=True).sums(model_lib.create(cfg, 0), {
            "inputs": np.zeros((1, 8), int), "positions": np.tile(np.arange(8), (1, 1)),
            "segment_ids": np.ones((1, 8), int), **none, "targets": np.zeros((1, 8), int)})


@pytest.fixture(scope="module")
def target_loss_fns():
    """jitted (sums, gradients) of the CoT loss on a tiny random model, per (targets_only,
    chunk): the full path compiled once; the gathered one once per cut length it meets."""
    cfg = load._random_model_config(tiny_config("unused")).replace(vocab_size=1024)
    graphdef, params = nnx.split(model_lib.create(cfg, 0))

    def fn(targets_only, chunk):
        def f(p, batch):
            s = CoTLoss(chunk, targets_only).sums(nnx.merge(graphdef, p), batch)
            return s["num"], s
        return jax.jit(jax.grad(f, has_aux=True))

    return params, {key: fn(*key) for key in ((False, 0), (True, 0), (True, 16))}


def _prompt_answer_batch(seed: int, B: int = 3, T: int = 64) -> dict:
    """Rows of packed examples: each a prompt (kind 0, weight 0) then a chain and answer (kinds
    1-2, weights > 0), then padding; some rows all loss, some none."""
    rng = np.random.default_rng(seed)
    kinds = np.zeros((B, T), np.int32)
    seg = np.zeros((B, T), np.int32)
    for b in range(B):
        t, s = 0, 1
        while t < T:
            prompt, target = rng.integers(0, 12), rng.integers(0, 20)
            if rng.random() < 0.15:
                break  # padding to the end
            end = min(T, t + prompt + target)
            kinds[b, min(T, t + prompt):end] = rng.integers(1, 3, max(0, end - t - prompt))
            seg[b, t:end] = s
            t, s = end, s + 1
    if seed % 5 == 0:
        kinds[0], seg[0] = 1, 1  # a row that is all chain: the capacity must be T
    weights = np.where(kinds > 0, rng.uniform(0.5, 1.5, (B, T)), 0).astype(np.float32)
    return {"inputs": rng.integers(0, 1024, (B, T)), "targets": rng.integers(0, 1024, (B, T)),
            "positions": np.tile(np.arange(T), (B, 1)), "segment_ids": seg,
            "weights": weights, "kinds": kinds}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_target_logits_only_gives_the_same_sums_and_gradients(target_loss_fns, seed):
    from cotjax.loss import target_index
    params, fns = target_loss_fns
    host = _prompt_answer_batch(seed)
    batch = {k: jnp.asarray(v) for k, v in host.items()}
    g_all, s_all = fns[False, 0](params, batch)
    for key in ((True, 0), (True, 16)):
        g, s = fns[key](params, {**batch, "target_index": jnp.asarray(target_index(host, key[1]))})
        for k in s_all:
            np.testing.assert_allclose(s[k], s_all[k], rtol=2e-5, atol=1e-6, err_msg=f"{key} {k}")
        for a, b in zip(jax.tree.leaves(g_all), jax.tree.leaves(g)):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_profile_steps_write_a_trace_of_the_steps_after_the_first(tok_dir, tmp_path, capsys):
    config = tiny_config(tok_dir, steps=4, profile_steps=2)
    config.mesh.data = 1
    train.train(config, tmp_path / "run", mesh=_mesh((1, 1, 1)))
    assert "profile: 2 steps traced into" in capsys.readouterr().out
    assert list((tmp_path / "run" / "profile").rglob("*.xplane.pb"))


def test_chunked_loss_gives_the_same_sums_and_gradients_without_the_full_logits():
    from cotjax.loss import CoTLoss

    cfg = load._random_model_config(tiny_config("unused")).replace(vocab_size=32768)
    model = model_lib.create(cfg, 0)
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    B, T = 2, 128
    batch = {"inputs": rng.integers(0, 32768, (B, T)), "targets": rng.integers(0, 32768, (B, T)),
             "positions": np.tile(np.arange(T), (B, 1)), "segment_ids": np.ones((B, T), int),
             "weights": rng.random((B, T)).astype(np.float32),
             "kinds": rng.integers(0, 3, (B, T))}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def loss(chunk):
        def f(p):
            s = CoTLoss(chunk).sums(nnx.merge(graphdef, p), batch)
            return s["num"], s
        return jax.jit(jax.grad(f, has_aux=True))

    (g_full, s_full), (g_chunk, s_chunk) = loss(0)(params), loss(16)(params)
    for k in s_full:
        np.testing.assert_allclose(s_chunk[k], s_full[k], rtol=2e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_chunk)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
    # The program's temporaries: the full [2, 128, 32768] float32 logits (32 MiB, and their
    # gradient) against one chunk's.
    temp = [loss(c).lower(params).compile().memory_analysis().temp_size_in_bytes for c in (0, 16)]
    assert temp[1] < temp[0] / 4, temp
    with pytest.raises(ValueError, match="train.loss_chunk=48 must divide the sequence length 128"):
        CoTLoss(48).sums(model, batch)
