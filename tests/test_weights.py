"""Real checkpoints: GGUF presets against transformers, HF export round trip, and bad input."""

import json
import os
import shutil
import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cotjax import weights

pytestmark = pytest.mark.one_device  # parity and file errors on one device: nothing is sharded

GSM8K = "data/gsm8k/train.jsonl"


def _questions(n):
    with open(GSM8K) as f:
        return [json.loads(next(f))["question"] for _ in range(n)]


def _hf_reference(preset):
    path = weights.preset_path(preset)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def smollm2():
    model, cfg = weights.load_model("smollm2-135m-instruct")
    return model, cfg, weights.load_tokenizer("smollm2-135m-instruct")


def _assert_parity(model, hf, ids):
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()
    logits, _ = model(jnp.asarray([ids]), jnp.arange(len(ids))[None])
    # compared in torch, which uses both cores: numpy took 13 s over Gemma's 600 x 262k logits
    ours, ref = torch.from_numpy(np.array(logits)), torch.from_numpy(ref)  # a writable copy
    assert torch.equal(ours.argmax(-1), ref.argmax(-1)), "top-1 token differs"
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-4


def test_smollm2_preset_matches_transformers_on_gsm8k(smollm2):
    model, cfg, tok = smollm2
    assert (cfg.family, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
            cfg.vocab_size, cfg.tie_embeddings) == ("llama", 30, 576, 9, 3, 49152, True)
    hf = _hf_reference("smollm2-135m-instruct")
    for q in _questions(3):
        _assert_parity(model, hf, tok(f"Question: {q}\nAnswer:").input_ids)


@pytest.mark.slow
def test_gemma3_preset_matches_transformers_beyond_the_sliding_window():
    model, cfg = weights.load_model("gemma3-270m")
    assert cfg.family == "gemma3" and cfg.sliding_window == 512 and cfg.is_sliding.count(False) == 3
    tok = weights.load_tokenizer("gemma3-270m")
    ids = tok("\n\n".join(_questions(12))).input_ids[:600]  # longer than the 512-token window
    assert len(ids) == 600
    _assert_parity(model, _hf_reference("gemma3-270m"), ids)


def test_export_round_trip_loads_in_transformers(smollm2, tmp_path):
    model, cfg, tok = smollm2
    out = weights.export_hf(model, tmp_path / "hf", tokenizer=tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = tok(f"Question: {_questions(1)[0]}\nAnswer:").input_ids
    assert hf_tok(f"Question: {_questions(1)[0]}\nAnswer:").input_ids == ids
    _assert_parity(model, hf, ids)
    # ... and the exported directory loads back into cotjax unchanged.
    again, cfg2 = weights.load_model(str(out))
    assert cfg2 == cfg
    for k, v in weights.model_params(model).items():
        np.testing.assert_array_equal(weights.model_params(again)[k], v)


# ---------------------------------------------------------------------------------------------
# The GGUF conversion cache (gguf-py reads slowly: each file is converted once).


def test_a_gguf_conversion_is_read_back_from_the_cache(tmp_path, monkeypatch, capsys):
    """A read through the cache gives the fresh conversion's config and bitwise its tensors; the
    second read (and read_config) take the entry without converting or parsing; a damaged entry
    is converted again; an unwritable cache, weights over COTJAX_GGUF_CACHE_MAX_GB and
    COTJAX_GGUF_CACHE=0 keep nothing, each with the run going on; a replaced file gets a new
    entry."""
    from cotjax import gguf_file

    monkeypatch.delenv("COTJAX_GGUF_CACHE", raising=False)
    monkeypatch.setenv("COTJAX_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "m.gguf"
    shutil.copy(weights.preset_path("smollm2-135m-instruct"), src)
    hf, tensors = gguf_file._convert_gguf(str(src))
    assert weights.read_config(str(src)) == hf  # from the metadata: no entry yet

    def same(got):
        assert got[0] == hf and got[1].keys() == tensors.keys()
        for k, v in tensors.items():
            np.testing.assert_array_equal(got[1][k], v, err_msg=k)

    same(gguf_file.read_gguf(str(src)))
    entry = gguf_file.cache_entry(str(src), "weights")
    assert (entry / "model.safetensors").is_file()
    assert not list(entry.parent.glob("*.tmp-*"))  # the temporary dir became the entry
    calls, convert = [], gguf_file._convert_gguf
    monkeypatch.setattr(gguf_file, "_convert_gguf", lambda p: calls.append(p) or convert(p))
    same(gguf_file.read_gguf(str(src)))

    def no_parsing(path):
        raise AssertionError("parsed the GGUF metadata")

    with monkeypatch.context() as m:
        m.setattr(gguf_file, "gguf_reader", no_parsing)
        assert calls == [] and weights.read_config(str(src)) == hf
    (entry / "model.safetensors").write_bytes(b"not a safetensors file")
    same(gguf_file.read_gguf(str(src)))
    assert calls == [str(src)] and "unreadable" in capsys.readouterr().err
    same(gguf_file.read_gguf(str(src)))
    assert calls == [str(src)]  # the entry written again reads back
    # The cases that keep nothing: the converter (tested above) stands in for speed.
    monkeypatch.setattr(gguf_file, "_convert_gguf", lambda p: calls.append(p) or (hf, tensors))
    (tmp_path / "a_file").write_text("")
    for env, value, message in [("COTJAX_CACHE", str(tmp_path / "a_file" / "c"), "not cached"),
                                ("COTJAX_GGUF_CACHE_MAX_GB", "0.1", "over COTJAX_GGUF_CACHE_MAX"),
                                ("COTJAX_GGUF_CACHE", "0", "")]:
        with monkeypatch.context() as m:
            m.setenv(env, value)
            if env == "COTJAX_GGUF_CACHE_MAX_GB":
                m.setenv("COTJAX_CACHE", str(tmp_path / "cache2"))
            same(gguf_file.read_gguf(str(src)))
            assert message in capsys.readouterr().err
            e = gguf_file.cache_entry(str(src), "weights")
            assert e is None or not e.exists(), env
    assert len(calls) == 4
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert gguf_file.cache_entry(str(src), "weights") not in (None, entry)


def test_entries_unread_for_days_go_when_a_new_one_is_written(tmp_path, monkeypatch, capsys):
    """A read marks its file's entries used; writing a new entry removes those of other files
    unread for over COTJAX_GGUF_CACHE_DAYS (and the dirs killed deletions left), keeps recent
    ones, and says so in one line; a cache read alone removes nothing."""
    from cotjax import gguf_file

    monkeypatch.delenv("COTJAX_GGUF_CACHE", raising=False)
    monkeypatch.setenv("COTJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COTJAX_GGUF_CACHE_DAYS", "3")

    def save(value, d):
        (d / "v").write_text(value)

    def read(name, value="x"):
        if not (tmp_path / name).exists():  # rewriting it would make a new entry
            (tmp_path / name).write_text(name)
        return gguf_file.through_cache(str(tmp_path / name), "k", lambda: value, save,
                                       lambda d: (d / "v").read_text())

    assert read("old.gguf") == "x" and read("recent.gguf") == "x"
    root = tmp_path / "cache" / "gguf"
    old, recent = (gguf_file.cache_entry(str(tmp_path / n), "k").parent
                   for n in ("old.gguf", "recent.gguf"))
    left = root / "gone-0123.tmp-x"  # a deletion killed before its rmtree
    (left / "old").mkdir(parents=True)
    day = 86400
    for d, age in [(old, 4 * day), (recent, 2 * day), (left, 4 * day)]:
        os.utime(d, (time.time() - age, time.time() - age))
    capsys.readouterr()
    assert read("recent.gguf") == "x"  # a read: marks recent used, removes nothing
    assert time.time() - recent.stat().st_mtime < 60 and old.is_dir() and left.is_dir()
    assert read("new.gguf", "y") == "y"  # a write: prunes
    assert sorted(d.name for d in root.iterdir()) == sorted(
        [recent.name, gguf_file.cache_entry(str(tmp_path / "new.gguf"), "k").parent.name])
    assert "removed 2 cached GGUF conversion(s) unread for over 3 days" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["smollm2-135m-instruct",
                                  pytest.param("gemma3-270m", marks=pytest.mark.slow)])
def test_the_cached_tokenizer_is_the_converted_one(spec, monkeypatch):
    monkeypatch.setenv("COTJAX_GGUF_CACHE", "0")
    fresh = weights.load_tokenizer(spec)
    monkeypatch.delenv("COTJAX_GGUF_CACHE")
    cached = weights.load_tokenizer(spec)  # read back from the session's cache
    from cotjax import gguf_file

    assert gguf_file.cache_entry(str(weights.preset_path(spec)), "tokenizer").is_dir()
    texts = _questions(3) + [" 50*2=$100 <<48/2=24>>", "\n\nThe answer is 72.", "é 🤖 ∑ x²"]
    for text in texts:
        for special in (True, False):
            ids = fresh(text, add_special_tokens=special).input_ids
            assert cached(text, add_special_tokens=special).input_ids == ids, (text, special)
            assert cached.decode(ids) == fresh.decode(ids)
    if fresh.chat_template:
        chat = [{"role": "user", "content": texts[0]}]
        assert (cached.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                == fresh.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "padding_side",
                 "all_special_ids", "chat_template"):
        assert getattr(cached, attr) == getattr(fresh, attr), attr
    assert cached.get_vocab() == fresh.get_vocab()


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors that name the problem.


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2)
    d = tmp_path_factory.mktemp("tiny")
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(d))
    return d


def _copy(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def test_missing_directory():
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        weights.load_model("./no/such/dir")


def test_directory_without_config(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        weights.load_model(str(d))


def test_read_config_needs_no_weights(tiny_dir, tmp_path, smollm2):
    d = _copy(tiny_dir, tmp_path)
    (d / "model.safetensors").unlink()  # the architecture alone (benchmarks' --random_init)
    cfg = weights.read_config(str(d))
    assert (cfg["hidden_size"], cfg["num_hidden_layers"]) == (16, 2)
    gguf_cfg = weights.read_config("smollm2-135m-instruct")
    assert gguf_cfg == weights.read_checkpoint("smollm2-135m-instruct")[0]
    assert smollm2[1] == type(smollm2[1]).from_hf(gguf_cfg)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        weights.read_config(str(d))


def test_directory_without_weights_names_pickles(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickled weights are not loaded"):
        weights.load_model(str(d))


def test_partial_sharded_checkpoint(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "model.norm.weight": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match=r"partial.*model-00002-of-00002"):
        weights.load_model(str(d))


def test_unsupported_architecture(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon"}))
    with pytest.raises(ValueError, match=r"'falcon'.*supported model types.*llama"):
        weights.load_model(str(d))


def _rewrite_tensors(d, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(d / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(d / "model.safetensors"))


def test_missing_tensor_is_named(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    _rewrite_tensors(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        weights.load_model(str(d))


def test_wrong_shape_is_named(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    _rewrite_tensors(d, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight":
                                            np.zeros((3, 16), np.float32)}))
    with pytest.raises(ValueError, match=r"k_proj\.weight.*shape \(3, 16\)"):
        weights.load_model(str(d))


def test_truncated_gguf(tmp_path):
    src = weights.preset_path("smollm2-135m-instruct")
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(40_000_000))
    with pytest.raises(ValueError, match=r"cut\.gguf.*truncated"):
        weights.load_model(str(cut))


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="presets: smollm2-135m-instruct, gemma3-270m"):
        weights.preset_path("llama-7b")
