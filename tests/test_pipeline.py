"""Packing properties (hypothesis), resumption, sharding, and the data-stats report."""

import collections
import contextlib
import io
import json
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotjax import cli
from cotjax.defaults import get_config
from cotjax import pipeline, records
from cotjax.pipeline import PackSpec
from cotjax.tokenize import Example
from cotjax.weights import load_tokenizer

ID0 = 10_000  # example i starts with token ID0 + i, so rows can be traced back to examples


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("smollm2-135m-instruct")

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**data):
    c = get_config()
    c.data.update(data)
    return c


@st.composite
def examples_and_spec(draw):
    seq_len = draw(st.integers(4, 48))
    examples = []
    for i in range(draw(st.integers(1, 30))):
        n = draw(st.integers(2, seq_len))
        prompt = draw(st.integers(1, n - 1))
        tokens = [ID0 + i] + draw(st.lists(st.integers(0, 999), min_size=n - 1, max_size=n - 1))
        weights = [0.0] * prompt + draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]),
                                                 min_size=n - prompt, max_size=n - prompt))
        examples.append((Example(np.array(tokens, np.int32), np.array(weights, np.float32)),
                         prompt))
    spec = PackSpec(seq_len=seq_len, batch_size=draw(st.integers(1, 4)),
                    seed=draw(st.integers(0, 3)), shuffle=draw(st.booleans()),
                    num_epochs=draw(st.integers(1, 2)),
                    packer=draw(st.sampled_from(sorted(pipeline.PACKERS))),
                    packing_bins=draw(st.integers(1, 6)))
    return examples, spec, draw(st.integers(1, 3))


def _segments(batch):
    """Yield (inputs, targets, weights, positions) of every packed example; check the layout."""
    for row in range(len(batch["inputs"])):
        seg = batch["segment_ids"][row]
        pad = seg == 0
        for key in pipeline.BATCH_KEYS:
            assert not batch[key][row][pad].any(), f"{key} not zero at padding"
        n_real = int((~pad).sum())
        assert not pad[:n_real].any(), "padding only after the examples"
        ids = seg[:n_real]
        assert (np.diff(ids) >= 0).all() and (ids[0] == 1 if n_real else True)
        for s in np.unique(ids):
            mask = seg == s
            yield tuple(batch[k][row][mask] for k in ("inputs", "targets", "weights", "positions"))


@settings(max_examples=60, deadline=None)
@given(examples_and_spec())
def test_packing_keeps_every_token_in_its_own_segment(case):
    examples, spec, process_count = case
    seen = collections.Counter()
    for process in range(process_count):
        if process >= len(examples):
            continue  # more processes than examples: that shard is empty (an error, tested below)
        for batch in pipeline.packed_dataset([e for e, _ in examples], spec, process,
                                             process_count):
            assert all(batch[k].shape == (spec.batch_size, spec.seq_len) for k in batch)
            assert batch["weights"].dtype == np.float32
            assert all(batch[k].dtype == np.int32 for k in batch if k != "weights")
            for inputs, targets, weights, positions in _segments(batch):
                ex, prompt = examples[inputs[0] - ID0]
                np.testing.assert_array_equal(inputs, ex.tokens)  # whole, in one segment
                np.testing.assert_array_equal(positions, np.arange(len(ex)))
                np.testing.assert_array_equal(targets[:-1], ex.tokens[1:])
                np.testing.assert_array_equal(weights[:-1], ex.weights[1:])
                assert targets[-1] == 0 and weights[-1] == 0  # nothing follows the last token
                assert not weights[:prompt - 1].any()  # predicting prompt tokens costs nothing
                seen[int(inputs[0])] += 1
    assert seen == {ID0 + i: spec.num_epochs for i in range(len(examples))}


def _random_examples(n, seq_len, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(2, seq_len + 1))
        tokens = np.concatenate([[ID0 + i], rng.integers(0, 999, length - 1)]).astype(np.int32)
        out.append(Example(tokens, np.ones(length, np.float32)))
    return out


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


@pytest.mark.parametrize("num_epochs", [1, -1])
def test_iterator_state_resumes_exactly(num_epochs):
    ds = pipeline.packed_dataset(_random_examples(300, 64),
                                 PackSpec(64, 2, seed=1, num_epochs=num_epochs, packing_bins=5))
    it = iter(ds)
    _take(it, 7)
    state = it.get_state()
    json.dumps(state)  # a checkpoint can store it as JSON
    expected = _take(it, 25)
    resumed = iter(ds)
    resumed.set_state(state)
    assert _same(_take(resumed, 25), expected)


def _starts(batches):
    """First tokens of the packed examples, in order: which examples, how often."""
    return [int(x) for b in batches
            for x in b["inputs"][(b["positions"] == 0) & (b["segment_ids"] > 0)]]


def test_repeat_forever_and_reshuffle_each_epoch():
    # One packing bin keeps the shuffled order: every 40 examples are one epoch.
    spec = PackSpec(16, 1, seed=3, num_epochs=-1, packing_bins=1)
    starts = _starts(_take(iter(pipeline.packed_dataset(_random_examples(40, 16), spec)), 80))
    first, second = starts[:40], starts[40:80]
    assert sorted(first) == sorted(second) == list(range(ID0, ID0 + 40)) and first != second


def test_seed_determines_the_order():
    examples = _random_examples(100, 32)

    def first_batch(seed):
        return next(iter(pipeline.packed_dataset(examples, PackSpec(32, 4, seed=seed))))

    assert _same([first_batch(0)], [first_batch(0)])
    assert not _same([first_batch(0)], [first_batch(1)])


def test_process_shards_are_disjoint():
    examples = _random_examples(50, 16)
    shards = [_starts(pipeline.packed_dataset(examples, PackSpec(16, 2), p, 3)) for p in range(3)]
    assert sorted(sum(shards, [])) == list(range(ID0, ID0 + 50))


def test_fit_length_truncates_or_drops_and_counts():
    long = Example(np.arange(10, dtype=np.int32), np.array([0] * 4 + [1] * 6, np.float32))
    prompt_only = Example(np.arange(10, dtype=np.int32), np.array([0] * 8 + [1] * 2, np.float32))
    short = Example(np.arange(3, dtype=np.int32), np.ones(3, np.float32))
    kept, truncated, dropped = pipeline.fit_length([long, prompt_only, short], 6, "truncate")
    assert [len(e) for e in kept] == [6, 3] and (truncated, dropped) == (1, 1)
    kept, truncated, dropped = pipeline.fit_length([long, prompt_only, short], 6, "drop")
    assert [len(e) for e in kept] == [3] and (truncated, dropped) == (0, 2)
    with pytest.raises(ValueError, match="exceed seq_len=6"):
        pipeline.packed_dataset([long], PackSpec(6, 1))


def test_bad_pack_settings():
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        pipeline.pack_spec(get_config(), 3)
    with pytest.raises(ValueError, match="num_epochs"):
        PackSpec(8, 1, num_epochs=0)
    with pytest.raises(ValueError, match="data.packer"):
        PackSpec(8, 1, packer="greedy")
    with pytest.raises(ValueError, match="has no examples"):
        pipeline.packed_dataset(_random_examples(1, 8), PackSpec(8, 1), 1, 2)


def test_fewshot_exemplars_come_from_the_train_split():
    assert pipeline.fewshot_exemplars(get_config()) == ()
    shots = pipeline.fewshot_exemplars(_config(fewshot=3))
    val_ids = {r.id for r in records.load_records(get_config().data, "validation")[0]}
    assert len(shots) == 3 and not val_ids & {r.id for r in shots}
    assert shots == pipeline.fewshot_exemplars(_config(fewshot=3))


def test_train_iterator_from_config(tok):
    config = _config(max_examples=64, seq_len=256, batch_size=4)
    it = pipeline.make_train_iterator(config, tok, process_index=1, process_count=2)
    batch = next(it)
    assert {k: v.shape for k, v in batch.items()} == {k: (2, 256) for k in pipeline.BATCH_KEYS}
    row = batch["inputs"][0][batch["segment_ids"][0] == 1]
    assert tok.decode(row).startswith("Question: ")
    assert tok.decode(row[-1:]) == "<|im_end|>"
    # kinds travel with the weights: every weighted target is chain or answer, the rest prompt
    weighted = batch["weights"] > 0
    assert (batch["kinds"][weighted] > 0).all() and (batch["kinds"][~weighted] == 0).all()
    assert set(np.unique(batch["kinds"])) == {0, 1, 2}


def test_overlong_examples_are_counted(tok):
    def report(overlong):
        return pipeline.load_examples(_config(max_examples=100, seq_len=160, overlong=overlong),
                                      tok)[1]

    drop, cut = report("drop"), report("truncate")
    assert drop.dropped > 0 and drop.truncated == 0 and drop.examples == 100 - drop.dropped
    assert cut.truncated == drop.dropped and cut.examples == 100
    with pytest.raises(ValueError, match="every example is longer than seq_len=8"):
        pipeline.load_examples(_config(max_examples=5, seq_len=8), tok)


def test_data_stats_on_the_default_config(tok, monkeypatch):
    monkeypatch.setattr("cotjax.weights.load_tokenizer", lambda spec: tok)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(["cotjax", "data-stats", f"--config={REPO / 'configs/base.py'}"])
    lines = out.getvalue().strip().split("\n")
    stats = json.loads(lines[-1])
    assert stats["examples"] == 6973 and stats["skipped"] == 0 and stats["truncated"] == 0
    assert stats["packing_efficiency"] > 0.95  # GSM8K, SmolLM2 tokenizer, seq_len 1024
    assert any(line.startswith("tokens per example: p50") for line in lines)


def test_data_stats_honours_config_tokenizer(tmp_path, capsys):
    """`config.tokenizer` is what training tokenizes with, so data-stats must use it too (with
    model=random there is no model tokenizer at all)."""
    from _train_utils import write_byte_tokenizer

    tok_dir = write_byte_tokenizer(tmp_path / "bytes")
    cli.main(["cotjax", "data-stats", f"--config={REPO / 'configs/base.py'}",
              "--config.model=random", f"--config.tokenizer={tok_dir}",
              "--config.data.max_examples=50", "--config.data.validation_size=10"])
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Byte tokens: an example is as many tokens as its UTF-8 bytes (plus specials), far more
    # than SmolLM2's tokens for the same text.
    assert stats["examples"] + stats["dropped"] == 50 and stats["tokens"] > 50 * 300
