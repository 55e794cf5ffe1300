"""LoRA / QLoRA: exact zero-init, the quantisers' stated error, merged and PEFT export against
transformers + peft, adapter-only checkpoints that resume exactly and refuse another base, and
every training objective with adapters."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from cotjax import checkpoint, defaults, load, lora, train, weights
from cotjax import model as model_lib

from _train_utils import tiny_config, write_byte_tokenizer

SMOLLM2 = "smollm2-135m-instruct"
PROMPT = "Question: Tom has 3 boxes of 12 pencils and gives away 7. How many are left?\nAnswer:"


def _lora_config(rank=8, quant="none", targets=None, model=SMOLLM2):
    c = defaults.get_config()
    c.model = model
    c.lora.rank = rank
    c.lora.quant = quant
    if targets:
        c.lora.targets = targets
    return c


def _random_adapters(model, seed=0, scale=0.05):
    """The model with every adapter (B included) set to random values: a trained-looking LoRA."""
    rng = np.random.default_rng(seed)
    params = weights.model_params(model)
    for k, v in params.items():
        if lora.ADAPTER.search(k):
            params[k] = (scale * rng.standard_normal(v.shape)).astype(np.float32)
    return weights.model_from_params(model.cfg, params)


def _logits(model, ids):
    return np.asarray(model(jnp.asarray([ids]), jnp.arange(len(ids))[None])[0][0])


@pytest.fixture(scope="module")
def smollm2():
    base, cfg = weights.load_model(SMOLLM2)
    ids = weights.load_tokenizer(SMOLLM2)(PROMPT).input_ids
    return base, cfg, ids


# ---------------------------------------------------------------------------------------------
# The model with adapters


@pytest.mark.one_device
def test_zero_initialised_adapters_give_the_base_logits_exactly(smollm2):
    base, _, ids = smollm2
    model, cfg = load.load_base_model(_lora_config(rank=8))
    assert cfg.lora.targets == tuple(lora.MATRICES)
    a = weights.model_params(model)["layers/wq_lora_a"]
    assert a.shape == (30, 576, 8) and np.abs(a).max() > 0  # A random, B zero
    np.testing.assert_array_equal(_logits(model, ids), _logits(base, ids))


@pytest.mark.one_device
@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_qlora_base_is_the_float_base_within_the_quantisers_error(smollm2, quant):
    base, _, ids = smollm2
    model, cfg = load.load_base_model(_lora_config(rank=4, quant=quant))
    params, plain = weights.model_params(model), weights.model_params(base)
    assert "layers/wq" not in params and params["layers/wq_codes"].dtype == (
        np.uint8 if quant == "nf4" else np.int8)
    for name in lora.MATRICES:
        w = plain[f"layers/{name}"]
        got = np.asarray(lora.dequantize(params[f"layers/{name}_codes"],
                                         params[f"layers/{name}_scale"], quant))
        n_lead = 1 + lora.MATRICES[name]
        absmax = np.abs(w.reshape(*w.shape[:n_lead], -1, 64)).max(-1, keepdims=True)
        err = np.abs((got - w).reshape(absmax.shape[:-1] + (64,)))
        assert np.all(err <= lora.MAX_ERROR[quant] * absmax * (1 + 1e-6) + 1e-7), name
    # 4 (nf4) or 8 (int8) bits a weight plus one float32 scale per 64 weights.
    stored = sum(params[f"layers/{n}_codes"].nbytes + params[f"layers/{n}_scale"].nbytes
                 for n in lora.MATRICES)
    dense = sum(plain[f"layers/{n}"].nbytes for n in lora.MATRICES)
    assert stored / dense == pytest.approx((4 if quant == "nf4" else 8) / 32 + 1 / 64)
    # The quantised model still reads the prompt much as the float one does.
    top = _logits(model, ids).argmax(-1), _logits(base, ids).argmax(-1)
    assert np.mean(top[0] == top[1]) >= (0.9 if quant == "int8" else 0.6)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.sampled_from([2, 8, 64]), st.sampled_from(["int8", "nf4"]),
       st.floats(1e-3, 1e3), st.integers(0, 2**31 - 1))
def test_quantise_round_trip_error_is_bounded(rows, block, quant, scale, seed):
    w = scale * np.random.default_rng(seed).standard_normal((rows, 3, 2 * block))
    codes, scales = lora.quantize(w, quant, block, n_lead=2)
    got = np.asarray(lora.dequantize(codes, scales, quant))
    blocks = np.abs(w).reshape(rows, 3, -1, block).max(-1, keepdims=True)
    err = np.abs(got - w).reshape(rows, 3, -1, block)
    assert np.all(err <= lora.MAX_ERROR[quant] * blocks * (1 + 1e-5))
    assert np.all(np.abs(got).reshape(blocks.shape[:-1] + (block,)).max(-1, keepdims=True)
                  == pytest.approx(blocks, rel=1e-6))  # the block's absmax is exact


@pytest.mark.one_device
def test_merged_export_equals_the_lora_model_and_loads_in_transformers(smollm2, tmp_path):
    _, _, ids = smollm2
    model, cfg = load.load_base_model(_lora_config(rank=8, targets=r"layers/(wq|wv|w_down)$"))
    model = _random_adapters(model)
    out = weights.export_hf(model, tmp_path / "merged")
    merged, mcfg = weights.load_model(str(out))
    assert mcfg.lora is None
    want = _logits(model, ids)
    np.testing.assert_allclose(_logits(merged, ids), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ref - want).max() / np.abs(want).max() <= 1e-4


@pytest.mark.one_device
def test_peft_loads_the_adapter_directory_with_the_same_logits(smollm2, tmp_path):
    import peft

    base, _, ids = smollm2
    base_dir = weights.export_hf(base, tmp_path / "base")
    model, cfg = load.load_base_model(_lora_config(rank=4, targets=r"layers/(wq|wk|wo|w_up)$"))
    model = _random_adapters(model, seed=1)
    adapter_dir = weights.export_peft(model, tmp_path / "adapter", base_model=str(base_dir))
    conf = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert (conf["r"], conf["lora_alpha"], conf["target_modules"]) == (
        4, 16.0, ["k_proj", "o_proj", "q_proj", "up_proj"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(hf, str(adapter_dir)).eval()
    with torch.no_grad():
        ref = peft_model(torch.tensor([ids])).logits[0].numpy()
    want = _logits(model, ids)
    assert np.abs(ref - want).max() / np.abs(want).max() <= 1e-4
    assert np.abs(want - _logits(base, ids)).max() > 1e-2  # the adapters do change the model


def test_bad_lora_settings_are_named():
    tiny = tiny_config("unused")
    tiny.lora.rank = 4
    tiny.lora.targets = r"layers/(q_proj|v_proj)"
    with pytest.raises(ValueError, match=r"lora.targets=.*matches none of the layer matrices"):
        load.load_base_model(tiny)
    tiny.lora.targets = "layers/(wq"
    with pytest.raises(ValueError, match="is not a regular expression"):
        load.load_base_model(tiny)
    tiny.lora.targets = "wq"
    tiny.lora.quant = "nf4"  # block 64 does not divide the tiny model's outputs (16, 32, 64)
    with pytest.raises(ValueError, match=r"layers/w_\w+ of shape .* not a multiple of lora.block=64"):
        load.load_base_model(tiny)
    tiny.lora.quant = "fp4"
    with pytest.raises(ValueError, match="lora.quant must be one of"):
        load.load_base_model(tiny)


# ---------------------------------------------------------------------------------------------
# Training with adapters


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_byte_tokenizer(tmp_path_factory.mktemp("tok") / "bytes")


def _tiny_lora(tok_dir, steps=4, quant="nf4", **train_kw):
    c = tiny_config(tok_dir, steps=steps, checkpoint_every=2, log_every=1, **train_kw)
    c.mesh.data = 1
    c.lora.rank = 4
    c.lora.quant = quant
    c.lora.block = 16
    return c


def _mesh():
    from cotjax import sharding

    return sharding.make_mesh(type("M", (), dict(data=1, fsdp=1, tensor=1))(), jax.devices()[:1])


def _restored(workdir, step=None):
    model, cfg, _, _ = load.load_run_model(workdir, step)
    return weights.model_params(model), cfg


def test_adapter_checkpoints_resume_exactly_and_hold_only_the_adapters(tok_dir, tmp_path):
    config = _tiny_lora(tok_dir, steps=4)
    straight = train.train(config, tmp_path / "straight", mesh=_mesh())
    config.train.steps = 2
    train.train(config, tmp_path / "resumed", mesh=_mesh())
    config.train.steps = 4
    resumed = train.train(config, tmp_path / "resumed", mesh=_mesh())
    assert straight.step == resumed.step == 4
    a, cfg = _restored(tmp_path / "straight")
    b, _ = _restored(tmp_path / "resumed")
    assert cfg.lora.quant == "nf4"
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The base is untouched and the checkpoint holds the adapters alone.
    base, _ = load.load_base_model(config)
    base_params = weights.model_params(base)
    for k, v in a.items():
        if not lora.ADAPTER.search(k):
            np.testing.assert_array_equal(v, base_params[k], err_msg=k)
    assert np.abs(a["layers/wq_lora_b"]).max() > 0
    tree = (tmp_path / "straight" / "checkpoints" / "4" / "params" / "_METADATA").read_text()
    assert "wq_lora_a" in tree and "wq_codes" not in tree and "embed" not in tree


def test_a_different_base_or_other_adapters_are_refused(tok_dir, tmp_path):
    config = _tiny_lora(tok_dir, steps=2)
    train.train(config, tmp_path / "run", mesh=_mesh())
    other = _tiny_lora(tok_dir, steps=4)
    other.seed = 1  # another random base
    with pytest.raises(ValueError, match="the base model of .* has changed"):
        train.train(other, tmp_path / "run", mesh=_mesh())
    other = _tiny_lora(tok_dir, steps=4)
    other.lora.rank = 8
    with pytest.raises(ValueError, match="began with lora=.*resuming it with"):
        train.train(other, tmp_path / "run", mesh=_mesh())
    from cotjax import export

    with pytest.raises(ValueError, match="--adapter --step=base: the base model has no trained"):
        export.main(str(tmp_path / "run"), str(tmp_path / "out"), "base", adapter=True)
    other = _tiny_lora(tok_dir, steps=3)
    other.lora.dropout = 0.1  # dropout is not a parameter: a run may resume with another
    assert train.train(other, tmp_path / "run", mesh=_mesh()).step == 3
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    saved["seed"] = 1
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="the base model of .* has changed"):
        load.load_run_model(tmp_path / "run")


def test_lora_trains_the_reward_head_of_a_prm(tok_dir, tmp_path):
    """A PRM with adapters: the zero-initialised reward head and the adapters train, the base
    does not."""
    from test_reward import label_line, reward_config

    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "labels-00000-of-00001.jsonl").write_text("".join(
        json.dumps(label_line(p, s, p + 1, s + 2, right=(p + s) % 3 != 0)) + "\n"
        for p in range(12) for s in range(2)))
    config = reward_config(tok_dir, labels, steps=3)
    config.mesh.data = 1
    config.lora.rank = 4
    result = train.train(config, tmp_path / "prm", mesh=_mesh())
    assert result.step == 3
    params, cfg = _restored(tmp_path / "prm")
    assert cfg.head == "reward" and cfg.lora is not None
    assert np.abs(params["reward_head"]).max() > 0 and np.abs(params["layers/wq_lora_b"]).max() > 0
    base, _ = load.load_base_model(config, head="reward")
    np.testing.assert_array_equal(params["layers/wq"], weights.model_params(base)["layers/wq"])


def test_dropout_changes_training_not_evaluation(tok_dir, tmp_path):
    config = _tiny_lora(tok_dir, steps=2, quant="none")
    config.lora.dropout = 0.3
    trainer_cfg = load.load_base_model(config)[1]
    assert trainer_cfg.lora.dropout == 0.3
    model = _random_adapters(load.load_base_model(config)[0])
    toks = jnp.asarray(np.arange(20).reshape(2, 10) % 200)
    pos = jnp.tile(jnp.arange(10), (2, 1))
    plain = np.asarray(model(toks, pos)[0])
    np.testing.assert_array_equal(plain, np.asarray(model(toks, pos)[0]))  # no key: no dropout
    model.dropout_key = model_lib.DropoutKey(jax.random.key(0))
    dropped = np.asarray(model(toks, pos)[0])
    assert np.abs(dropped - plain).max() > 1e-4
    result = train.train(config, tmp_path / "drop", mesh=_mesh())
    assert result.step == 2 and np.isfinite(result.final_metrics["loss"])


def test_adapters_shard_by_the_rules_table(tok_dir, tmp_path):
    from cotjax import sharding

    config = _tiny_lora(tok_dir, steps=2, quant="int8")
    mesh = sharding.make_mesh(type("M", (), dict(data=2, fsdp=2, tensor=2))(), jax.devices()[:8])
    trainer_cfg = load.load_base_model(config)[1]
    trainer = train.Trainer(trainer_cfg, train.TrainSpec(steps=2), mesh, 2)
    specs = jax.tree.map(lambda s: s.spec, trainer.param_shardings)
    # A [L, D, r]: embed over fsdp; B [L, r, N, H]: heads over tensor; the rank replicated.
    assert specs["layers"]["wq_lora_a"] == jax.sharding.PartitionSpec(None, "fsdp")
    assert specs["layers"]["wq_lora_b"] == jax.sharding.PartitionSpec(None, None, "tensor")
    frozen = jax.tree.map(lambda s: s.spec, trainer.frozen_shardings)
    assert frozen["layers"]["w_gate_codes"] == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert "embed" in frozen and "embed" not in specs  # the base is frozen, not trained
    result = train.train(config, tmp_path / "sharded", mesh=mesh)
    assert result.step == 2 and np.isfinite(result.final_metrics["loss"])


def test_model_config_round_trips_its_lora_spec():
    spec = lora.LoraSpec(rank=4, alpha=8.0, targets=("wq", "wv"), quant="nf4", block=16)
    cfg = load._random_model_config(tiny_config("unused")).replace(lora=spec)
    again = model_lib.ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    shapes, _ = load.abstract_params(cfg)
    trained, frozen = lora.split(shapes, spec)
    assert set(trained["layers"]) == {"wq_lora_a", "wq_lora_b", "wv_lora_a", "wv_lora_b"}
    assert lora.join(frozen, trained) == shapes
    assert nnx.LoRAParam  # the adapters' variable type (optimizer filters, notebooks)


def test_a_distillation_round_trains_and_samples_a_lora_student(tok_dir, tmp_path):
    """A round of `launch/rft_rounds.sh` with adapters: the student trains on distilled records
    (data.train_path) and then samples through the engine (adapters merged at load)."""
    from cotjax import sample

    kept = tmp_path / "kept.jsonl"
    kept.write_text("".join(json.dumps({"question": f"What is {i} + 2?", "chain": f"{i} + 2 = {i + 2}",
                                        "answer": str(i + 2)}) + "\n" for i in range(40)))
    config = _tiny_lora(tok_dir, steps=2, quant="int8")
    config.data.train_path = str(kept)
    config.eval.max_new_tokens = 8
    config.eval.batch_size = 4
    train.train(config, tmp_path / "student", mesh=_mesh())
    run_config, _ = checkpoint.read_run_config(tmp_path / "student")
    with run_config.unlocked():
        run_config.eval.max_examples = 4
    sample.run_sample(run_config, str(tmp_path / "student"), None, data="validation", k=2,
                      out=str(tmp_path / "samples"))
    rows = [json.loads(line) for f in sorted((tmp_path / "samples").glob("samples-*.jsonl"))
            for line in f.read_text().splitlines()]
    assert len(rows) == 8 and all("generation" in r for r in rows)


def test_peft_keys_follow_the_bases_layout():
    assert weights.peft_layers_prefix({"model_type": "llama"}) == "model.layers"
    wrapped = {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}}
    assert weights.peft_layers_prefix(wrapped) == "model.language_model.layers"


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_a_merged_qlora_model_computes_what_the_adapted_one_does(tok_dir, quant):
    """Merging (eval's load, the HF export) dequantises on the host, one layer at a time, and
    adds the adapters: the same logits as the quantised base with its adapters."""
    config = _tiny_lora(tok_dir, quant=quant)
    model = _random_adapters(load.load_base_model(config)[0], scale=0.3)
    merged, cfg = load.merge_adapters(model)
    assert cfg.lora is None and "layers/wq" in weights.model_params(merged)
    toks = jnp.asarray(np.arange(24).reshape(2, 12) % 200)
    pos = jnp.tile(jnp.arange(12), (2, 1))
    want = np.asarray(model(toks, pos)[0])
    # (W + s·BA)x against Wx + s·B(Ax): the same sum in another order. On a 2-core Xeon with
    # AVX-512 (family 6 model 167) int8 logits differed by up to 1.06e-5 at max |logit| 0.48,
    # beyond 1e-5 x max; the adapters themselves move the logits far more (asserted).
    atol = 5e-5 * np.abs(want).max()
    np.testing.assert_allclose(np.asarray(merged(toks, pos)[0]), want, rtol=1e-5, atol=atol)
    plain = np.asarray(load.load_base_model(config)[0](toks, pos)[0])  # zero-initialised B
    assert np.abs(want - plain).max() > 100 * atol


def test_the_lora_experiment_table_is_the_committed_files():
    """docs/lora.md's table: accuracies, counts and paired tests recomputed from results/lora."""
    from cotjax import report

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    doc = (root / "docs/lora.md").read_text()
    res = root / "results/lora"
    for run in ("full", "lora", "qlora"):
        s = json.loads((res / f"synthetic_{run}_summary.json").read_text())
        lo, hi = s["accuracy_ci95"]
        assert f"{s['accuracy']:.3f}".lstrip("0") in doc.replace("0.", ".")
        assert f"({s['correct']}) [{lo:.3f}, {hi:.3f}]" in doc, run
        assert f"{s['steps_valid']} / {s['steps_total']}" in doc, run
        rows = [json.loads(line) for line in
                (res / f"synthetic_{run}_predictions.jsonl").read_text().splitlines()]
        assert sum(r["correct"] for r in rows) == s["correct"] and len(rows) == 240
        if run != "full":
            p = report.paired_from_files(res / "synthetic_full_predictions.jsonl",
                                         res / f"synthetic_{run}_predictions.jsonl")
            assert f"{p['only_a']} / {p['only_b']}, p = {p['mcnemar_p']:.2g}" in doc, run
    by_steps = json.loads((res / "by_steps.json").read_text())
    for run, label in (("full", "full"), ("lora", "LoRA"), ("qlora", "QLoRA")):
        cells = " | ".join(f"{by_steps[run][str(k)]['accuracy']:.2f}" for k in range(1, 9))
        assert f"| {label} | {cells} |" in doc, run
