"""Reward models (issue 23): where scores are read, the reward loss, PRM/ORM training and exact
resume, packing-independent scores, the selectors, and the errors for wrong inputs."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _train_utils import tiny_config, write_byte_tokenizer
from cotjax import checkpoint as ckpt_lib
from cotjax import decode, load, loss, pipeline, prm, rerank, tokenize, train, weights
from cotjax import model as model_lib

GENERATION = ("Weng earns 12/60=$0.2 per minute.\nWorking 50 minutes, she earned "
              "0.2 x 50 = $10.\nShe earned $10.\nThe answer is 10.")

# Gemma 3's chat template, without its system-prompt and multimodal branches.
GEMMA_CHAT = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
              "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
              "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
              "{% endif %}")


def label_line(problem: int, sample: int, a: int, b: int, right: bool) -> dict:
    """A `cotjax label-steps` line of a two-step chain computing (a + b) * 2."""
    s = a + b
    value = 2 * s if right else 2 * s + 1
    chain = f"First {a} + {b} = {s}.\nThen {s} * 2 = {value}."
    spans = [(0, chain.index("\n")), (chain.index("\n") + 1, len(chain))]
    steps = [{"index": k, "text": chain[x:y], "span": [x, y], "checker": 1, "kind": "x",
              "soft": soft, "hard": int(soft > 0)}
             for k, ((x, y), soft) in enumerate(zip(spans, (1.0, 1.0 if right else 0.0)), 1)]
    return {"problem": problem, "sample": sample, "question": f"What is ({a} + {b}) * 2?",
            "gold": str(2 * s), "generation": chain + f"\nThe answer is {value}.",
            "chain": chain, "correct": right, "steps": steps}


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        write_byte_tokenizer(tmp_path_factory.mktemp("bytes") / "tok"))


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    lines = [label_line(p, s, p + 1, s + 2, right=(p + s) % 3 != 0)
             for p in range(12) for s in range(2)]
    (root / "labels-00000-of-00001.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines))
    return root


def reward_config(tok_dir, labels, objective="prm", **train_kw):
    c = tiny_config(tok_dir, **{"steps": 4, "objective": objective, **train_kw})
    c.data.labels = str(labels)
    c.data.labels_validation = 0.25
    c.data.template = "plain"
    c.data.max_skipped_fraction = 0.0
    return c


# ---------------------------------------------------------------------------------------------
# Where scores are read.

@pytest.mark.one_device
@pytest.mark.parametrize("spec", ["smollm2-135m-instruct", "gemma3-270m"])
@pytest.mark.parametrize("template", ["plain", "chat"])
def test_scores_are_read_at_the_last_token_of_each_step(spec, template):
    tok = weights.load_tokenizer(spec)
    if template == "chat" and not tok.chat_template:  # the GGUF's tokenizer carries none
        tok.chat_template = GEMMA_CHAT
    ends = prm.score_ends(GENERATION)
    assert [GENERATION[:e].splitlines()[-1] for e in ends] == GENERATION.splitlines()
    ex, reads = tokenize.reward_example("How much did Weng earn?", GENERATION, ends,
                                        [1.0, 0.0, None, 1.0], tok, template)
    prompt_len = len(ex.tokens) - sum(
        len(tok(p, add_special_tokens=False)["input_ids"]) for p in
        [(" " if template == "plain" else "") + GENERATION[:ends[0]],
         *(GENERATION[a:b] for a, b in zip(ends, ends[1:]))])
    lead = " " if template == "plain" else ""
    for end, pos in zip(ends, reads):
        # the read token closes the step: the generation's text through it, and no more
        assert tok.decode(ex.tokens[prompt_len:pos + 1]) == lead + GENERATION[:end]
    np.testing.assert_array_equal(np.flatnonzero(ex.weights), reads[[0, 1, 3]])
    np.testing.assert_array_equal(ex.labels[reads], [1.0, 0.0, 0.0, 1.0])
    assert reads[-1] == len(ex.tokens) - 1


def test_reward_targets_of_prm_and_orm_lines():
    line = label_line(0, 0, 3, 4, right=False)
    gen, ends, labels = prm.reward_target(line, "prm", "hard", "f:1")
    assert [gen[:e].splitlines()[-1] for e in ends] == gen.splitlines()
    assert labels == [1.0, 0.0, 0.0]  # two steps, then the answer statement: the chain's outcome
    line["steps"][1]["soft"] = 0.25
    assert prm.reward_target(line, "prm", "soft", "f:1")[2] == [1.0, 0.25, 0.0]
    gen, ends2, labels = prm.reward_target(line, "orm", where="f:1")
    assert ends2 == ends and labels == [None, None, 0.0]
    # the step checker's verdicts: a step without a claim (None) is read but not trained
    line["steps"][0]["checker"], line["steps"][1]["checker"] = None, 0
    assert prm.reward_target(line, "prm", "checker", "f:1")[2] == [None, 0.0, 0.0]
    line["steps"][1]["checker"] = True
    with pytest.raises(ValueError, match="f:1: step 2: label 'checker' must be in"):
        prm.reward_target(line, "prm", "checker", "f:1")


@pytest.mark.parametrize("break_it, message", [
    (lambda x: x["steps"][1].update(text="Then 7 * 2 = 15"), "step 2 .* does not match its chain"),
    (lambda x: x["steps"][0].update(span=[1, 10]), "step 1 .* does not match its chain"),
    (lambda x: x["steps"][1].update(hard=2), "step 2: label 'hard' must be in"),
    (lambda x: x.update(generation="Something else."), "the chain is not the start"),
    (lambda x: x.update(correct=None), "field 'correct' must be bool"),
    (lambda x: x.pop("steps"), "no 'steps'"),
])
def test_a_label_line_that_does_not_match_its_chain_is_refused(break_it, message):
    line = label_line(0, 0, 3, 4, right=True)
    break_it(line)
    with pytest.raises(ValueError, match="labels.jsonl:7: " + message):
        prm.reward_target(line, "prm", "hard", "labels.jsonl:7")


def test_a_bad_label_file_names_its_line(tmp_path, byte_tok):
    path = tmp_path / "labels-00000-of-00001.jsonl"
    path.write_text(json.dumps(label_line(0, 0, 1, 2, True)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"labels-00000-of-00001.jsonl:2: not JSON"):
        prm.read_label_rows(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nothing' does not exist"):
        prm.read_label_rows(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no labels-.* or samples-"):
        prm.read_label_rows(str(tmp_path / "empty"))


def test_held_out_problems_keep_every_chain_of_a_problem_on_one_side(label_dir, byte_tok):
    c = reward_config(str(label_dir.parent), label_dir)
    rows = prm.read_label_rows(str(label_dir))
    held = pipeline.held_out_problems([r["problem"] for _, r in rows], 0.25, 7)
    assert len(held) == 3 and held == pipeline.held_out_problems(list(range(12)), 0.25, 7)
    train_ids = {e.id for e in pipeline._reward_examples(c, byte_tok, "train")[0]}
    val_ids = {e.id for e in pipeline._reward_examples(c, byte_tok, "validation")[0]}
    assert len(train_ids) == 18 and len(val_ids) == 6 and not train_ids & val_ids
    assert {i.split("/")[0] for i in train_ids}.isdisjoint({i.split("/")[0] for i in val_ids})


# ---------------------------------------------------------------------------------------------
# The loss.

def _tiny_reward_model(seed=0):
    from _train_utils import TINY_ARCH

    arch = dict(TINY_ARCH, rope=model_lib.RopeConfig(10000.0), head="reward")
    cfg = model_lib.ModelConfig(**arch)
    m = model_lib.create(cfg, seed)
    m.reward_head.set_value(0.3 * jax.random.normal(jax.random.key(seed + 1), (cfg.d_model,)))
    return m


def test_the_reward_loss_reads_only_labelled_positions():
    m = _tiny_reward_model()
    rng = np.random.default_rng(0)
    B, T = 2, 24
    weights_ = (rng.random((B, T)) < 0.2).astype(np.float32)
    batch = {"inputs": rng.integers(3, 259, (B, T)).astype(np.int32),
             "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1)),
             "segment_ids": np.ones((B, T), np.int32), "weights": weights_,
             "labels": rng.choice([0.0, 0.25, 1.0], (B, T)).astype(np.float32)}
    sums = loss.RewardLoss().sums(m, batch)
    x, _ = m.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
    z = np.asarray(m.reward(x))
    p = 1 / (1 + np.exp(-z))
    y = batch["labels"]
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(float(sums["num"]), float((weights_ * bce).sum()), rtol=1e-5)
    assert float(sums["den"]) == weights_.sum()
    # labels where nothing is read change neither the loss nor its gradient
    other = dict(batch, labels=np.where(weights_ > 0, y, 1 - y))
    from flax import nnx

    def grads(b):
        return nnx.grad(lambda mm: loss.RewardLoss().sums(mm, b)["num"])(m)

    g1, g2 = grads(batch), grads(other)
    assert float(loss.RewardLoss().sums(m, other)["num"]) == float(sums["num"])
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_array_equal(a, b)
    # a zero head starts every position at p = 1/2: the loss is log 2 whatever the labels
    m.reward_head.set_value(jnp.zeros_like(m.reward_head[...]))
    s = loss.RewardLoss().summarize(jax.device_get(loss.RewardLoss().sums(m, batch)))
    assert abs(s["loss"] - np.log(2)) < 1e-6 and s["auroc"] == 0.5


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-6, 6), st.booleans()), min_size=2, max_size=60))
def test_auroc_from_score_histograms_matches_the_pairwise_count(points):
    z = np.array([p[0] for p in points], np.float32)
    y = np.array([p[1] for p in points], np.float32)
    pos, neg = z[y > 0], z[y == 0]
    s = loss.reward_sums(jnp.asarray(z)[None], jnp.asarray(y)[None], jnp.ones((1, len(z))),
                         jnp.ones((1, len(z)), jnp.int32))
    got = loss.auroc(s["hist_pos"], s["hist_neg"])
    if not len(pos) or not len(neg):
        assert np.isnan(got)
        return
    exact = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    # scores in the same bin count as ties: the difference is at most the share of such pairs
    bins = lambda v: np.clip(((np.clip(v, -12, 12) + 12) / 24 * 512).astype(int), 0, 511)  # noqa: E731
    same = np.mean([bins(np.array(a)) == bins(np.array(b)) for a in pos for b in neg])
    assert abs(got - exact) <= 0.5 * same + 1e-9


# ---------------------------------------------------------------------------------------------
# Training, resume, scoring.

@pytest.fixture(scope="module")
def prm_run(label_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("prm_run")
    tok = write_byte_tokenizer(root / "tok")
    c = reward_config(tok, label_dir, checkpoint_every=2, eval_every=2)
    result = train.train(c, root / "run")
    return {"config": c, "workdir": root / "run", "result": result, "tok": tok}


def test_a_prm_trains_logs_label_metrics_and_resumes_exactly(prm_run, tmp_path):
    r = prm_run["result"]
    assert r.step == 4 and r.data["examples"] == 18
    for k in ("loss", "label_acc", "auroc", "label_pos_frac"):
        assert k in r.final_metrics and k in r.val_metrics
    assert np.isfinite(r.val_metrics["loss"]) and r.val_metrics["loss"] < 2
    cfg = ckpt_lib.read_run_config(prm_run["workdir"])[1]
    assert cfg.head == "reward"
    # Resume from step 2 (the step-4 checkpoint removed): the same step-4 parameters.
    copy = tmp_path / "copy"
    shutil.copytree(prm_run["workdir"], copy)
    shutil.rmtree(copy / "checkpoints" / "4")
    assert train.train(prm_run["config"], copy).step == 4
    abstract = load.placed_abstract_params(cfg)
    want, _ = ckpt_lib.restore_params(prm_run["workdir"], 4, abstract)
    got, _ = ckpt_lib.restore_params(copy, 4, abstract)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(np.abs(np.asarray(want["reward_head"])).sum()) > 0  # the head did train


def test_scores_do_not_depend_on_what_else_is_packed_in_the_row(prm_run, byte_tok):
    model, _, _, _ = load.load_run_model(prm_run["workdir"])
    lines = [label_line(p, 0, p, 5, right=True) for p in range(5)]
    exs, reads = [], []
    for x in lines:
        ends = prm.score_ends(x["generation"])
        ex, pos = tokenize.reward_example(x["question"], x["generation"], ends,
                                          [None] * len(ends), byte_tok, "plain")
        exs.append(ex)
        reads.append(pos)
    alone = [rerank.score_examples(model, [e], [r], seq_len=128, batch_rows=1)[0]
             for e, r in zip(exs, reads)]
    packed = rerank.score_examples(model, exs, reads, seq_len=512, batch_rows=2)
    assert len(rerank.pack_rows([len(e) for e in exs], 512)) < len(exs)  # rows were shared
    for a, b in zip(alone, packed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_a_child_scored_from_its_parents_cache_scores_as_if_read_whole(prm_run, data):
    """rerank.score_extensions (a step search's candidates, each continuing a partial chain
    whose keys and values are read once) against score_examples reading each child whole, at
    every position: children that share all of their parent, or only part of it (a step
    boundary tokenized another way), and parents with several children."""
    model = prm_run.setdefault("model", load.load_run_model(prm_run["workdir"])[0])
    vocab = model.cfg.vocab_size
    tokens = st.lists(st.integers(3, vocab - 1), min_size=1, max_size=30)
    parents = [np.asarray(data.draw(st.lists(st.integers(3, vocab - 1), min_size=8,
                                             max_size=96)), np.int32)
               for _ in range(data.draw(st.integers(1, 5)))]
    children = []
    for p, parent in enumerate(parents):
        for _ in range(data.draw(st.integers(0, 4))):
            keep = data.draw(st.integers(1, len(parent)))
            children.append((p, np.asarray([*parent[:keep], *data.draw(tokens)], np.int32)))
    reads = [np.arange(len(t)) for _, t in children]
    got = rerank.score_extensions(model, parents, children, reads)
    want = rerank.score_examples(model, [tokenize.Example(t, np.zeros(len(t), np.float32))
                                         for _, t in children], reads, seq_len=256)
    assert len(got) == len(children)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_pack_rows_fits_every_example_once():
    lengths = [5, 60, 31, 64, 2, 33]
    rows = rerank.pack_rows(lengths, 64)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum(lengths[i] for i in r) <= 64 for r in rows)
    with pytest.raises(ValueError, match="more than a row"):
        rerank.pack_rows([65], 64)


# ---------------------------------------------------------------------------------------------
# Selectors.

def test_selectors_on_a_hand_made_score_table():
    answers = ["3", "5", "5", None, "3.0"]
    steps = [[0.9, 0.65], [0.2, 0.9], [0.5, 0.5], [0.99], [0.8, 0.7]]
    orm = [0.1, 0.3, 0.2, 0.95, 0.25]
    out = prm.select_answers(answers, "3", "gsm8k", steps, orm, how="min")
    # majority: "3" and "3.0" are one vote group (2) against "5" (2); the tie goes to "3", first
    assert out["majority"] == {"answer": "3", "correct": True}
    assert out["orm_best"] == {"answer": "5", "correct": False}  # 0.95 has no answer: skipped
    assert out["prm_best"]["answer"] == "3.0" and out["prm_best"]["correct"]  # min 0.7
    assert out["prm_weighted"]["answer"] == "3"  # 0.65 + 0.7 against 0.2 + 0.5
    assert out["pass_at_n"]["correct"]
    prod = prm.select_answers(answers, "5", "gsm8k", steps, how="prod")
    assert prod["prm_best"]["answer"] == "3" and not prod["prm_best"]["correct"]  # 0.585 > 0.56
    last = prm.select_answers(answers, "5", "gsm8k", steps, how="last")
    assert last["prm_best"]["answer"] == "5" and last["prm_weighted"]["answer"] == "5"
    assert "orm_best" not in last
    # step_min leaves out the end-of-generation score (the last), unless it is the only one
    assert prm.aggregate([0.3, 0.9, 0.1], "step_min") == 0.3 and prm.aggregate([0.4], "step_min") == 0.4
    step_min = prm.select_answers(answers, "3", "gsm8k", steps, how="step_min")
    assert step_min["prm_best"]["answer"] == "3"  # 0.9 beats 0.8 (min picks "3.0" by 0.7)
    assert prm.select_answers([None, None], "1", "gsm8k", [[0.5], [0.4]])["prm_best"] == \
        {"answer": None, "correct": False}
    with pytest.raises(ValueError, match="aggregate must be one of"):
        prm.aggregate([0.5], "mean")
    # the model-free verifier: the majority of the samples whose claims all hold, else of all
    checked = prm.select_answers(answers, "5", "gsm8k", checked=[False, True, False, True, False])
    assert checked["checked_majority"] == {"answer": "5", "correct": True}
    assert checked["majority"]["answer"] == "3" and "prm_best" not in checked
    none = prm.select_answers(answers, "5", "gsm8k", checked=[False, False, False, True, False])
    assert none["checked_majority"]["answer"] == "3"  # the one checked sample has no answer


def test_rerank_writes_every_selector_and_the_paired_test(prm_run, label_dir, tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    rows = [label_line(p, s, p, s, right=s % 2 == 0) for p in range(4) for s in range(4)]
    from cotjax.answers import extract_answer

    (samples / "samples-00000-of-00001.jsonl").write_text("".join(
        json.dumps({**x, "extracted": extract_answer(x["generation"], "gsm8k"),
                    "all_steps_valid": x["correct"]}) + "\n" for x in rows))
    (samples / "manifest.json").write_text(json.dumps({"task": "gsm8k"}))
    orm_root = tmp_path / "orm"
    c = reward_config(prm_run["tok"], label_dir, objective="orm", steps=2)
    train.train(c, orm_root)
    got = rerank.run_rerank([str(samples)], str(tmp_path / "out"),
                            prm_run=str(prm_run["workdir"]), orm_run=str(orm_root))
    saved = json.loads((tmp_path / "out" / "selection.json").read_text())
    for key in prm.SELECTORS:
        assert set(saved[key]) == {"accuracy", "n"} and saved[key]["n"] == 4
    assert saved["checked_majority"]["accuracy"] == 1.0  # here the checked chains are the right
    assert "checked_majority" in saved["paired_vs_majority"]
    assert rerank.reselect(str(tmp_path / "out")) == saved  # the checker's verdicts are kept
    assert saved["pass_at_n"]["accuracy"] == 1.0 and 0 <= saved["mcnemar_p"] <= 1
    assert set(saved["by_n"]) == {"1", "2", "4"} and set(saved["by_aggregate"]) == \
        {"min", "prod", "last", "step_min"}
    assert got["by_n"]["4"]["majority"] == saved["majority"]["accuracy"]
    preds = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text()
             .splitlines()]
    assert len(preds) == 4 and all(len(p["samples"]) == 4 for p in preds)
    assert all(len(s["prm"]) == 3 and len(s["orm"]) == 3 for p in preds for s in p["samples"])
    assert (tmp_path / "out" / "accuracy_vs_n.png").stat().st_size > 1000
    # the reverse: an ORM given as --prm
    with pytest.raises(ValueError, match="train.objective=orm; --prm needs"):
        rerank.run_rerank([str(samples)], str(tmp_path / "o2"), prm_run=str(orm_root))


def test_rerank_without_a_model_votes_among_the_checked_samples_of_an_eval_file(tmp_path):
    """`cotjax rerank` on a `cotjax eval` maj@N predictions file, no reward model: each
    sample is scored again from its generation (its step report too) and the model-free
    selectors are compared; a predictions file without samples is refused at its line."""
    right, wrong = "3 + 4 = 7.\nThe answer is 7.", "3 + 4 = 8.\nThe answer is 8."
    off = "3 + 4 = 9.\nThe answer is 9."
    rows = [{"id": "a", "question": "3 + 4?", "gold": "7", "samples": [
        {"generation": g} for g in (wrong, right, off, wrong)]},
        {"id": "b", "question": "3 + 4?", "gold": "7", "samples": [
            {"generation": g} for g in (right, off, off, right)]}]
    path = tmp_path / "maj_predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "maj_summary.json").write_text(json.dumps({"task": "gsm8k"}))
    got = rerank.run_rerank([str(path)], str(tmp_path / "out"))
    assert got["majority"]["accuracy"] == 0.5  # "8" wins problem a, "7" (first seen) problem b
    assert got["checked_majority"]["accuracy"] == 1.0 and got["pass_at_n"]["accuracy"] == 1.0
    assert got["paired_vs_majority"]["checked_majority"]["only_a"] == 1
    assert "prm_best" not in got and got["prm"] is None
    assert rerank.reselect(str(tmp_path / "out")) == json.loads(
        (tmp_path / "out" / "selection.json").read_text())
    path.write_text(json.dumps({"id": "a", "question": "q", "gold": "1"}) + "\n")
    with pytest.raises(ValueError, match="maj_predictions.jsonl:1: no 'samples' list"):
        rerank.run_rerank([str(path)], str(tmp_path / "out2"))


# ---------------------------------------------------------------------------------------------
# The wrong kind of checkpoint.

def test_a_reward_model_is_refused_where_a_policy_decodes(prm_run):
    with pytest.raises(ValueError, match="is a reward model .*; decoding needs a policy"):
        load.load_for_eval(prm_run["config"], str(prm_run["workdir"]))


def test_a_policy_is_refused_where_a_reward_model_scores(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="is a policy .*; --prm needs a reward model"):
        rerank.load_reward_model(str(tiny_run["workdir"]), None, "prm")


def test_a_policy_run_does_not_resume_as_a_reward_model(tiny_run, label_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run["workdir"], copy)
    c = reward_config(str(tiny_run["config"].tokenizer), label_dir, steps=8)
    with pytest.raises(ValueError, match="holds a model with head='lm'; train.objective=prm"):
        train.train(c, copy)


def test_a_reward_model_has_no_causal_lm_export_and_no_vocabulary_flops():
    from cotjax import metrics

    cfg = _tiny_reward_model().cfg
    with pytest.raises(ValueError, match="no transformers causal-LM export"):
        cfg.to_hf()
    lm = cfg.replace(head="lm")
    assert metrics.matmul_params(lm) - metrics.matmul_params(cfg) == cfg.d_model * (
        cfg.vocab_size - 1)


def test_a_prm_trains_on_the_checker_labels_when_told(byte_tok, tmp_path):
    """train.reward_labels=checker: the examples carry each step's checker verdict (none where
    the step has no claim) and the outcome at the answer, not the Monte Carlo labels."""
    lines = [label_line(p, 0, p + 1, 2, right=p % 2 == 0) for p in range(4)]
    for x in lines:
        x["steps"][0]["checker"], x["steps"][1]["checker"] = None, 0
    (tmp_path / "labels-00000-of-00001.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines))
    c = reward_config("x", tmp_path, reward_labels="checker")
    both = {}
    for kind in ("checker", "hard"):
        c.train.reward_labels = kind
        both[kind] = sorted(tuple(e.labels[e.weights > 0]) for split in ("train", "validation")
                            for e in pipeline.load_examples(c, byte_tok, split)[0])
    assert both["checker"] == sorted((0.0, float(x["correct"])) for x in lines)
    assert both["hard"] == sorted((1.0, float(x["correct"]), float(x["correct"])) for x in lines)


def sample_line(problem: int, generation: str, correct: bool) -> dict:
    """A `cotjax sample` line's fields that reward training reads (no chain, no MC labels)."""
    return {"problem": problem, "sample": 0, "question": f"Question {problem}?",
            "generation": generation, "correct": correct, "steps": [{"ok": True}]}


def test_checker_labels_of_a_sample_line_are_those_label_steps_writes():
    """A PRM on checker labels reads `cotjax sample` lines directly: the checker's verdicts of
    their steps, the same targets as the `cotjax label-steps` line of the same chain."""
    gen = ("Weng earns 12/60=$0.2 per minute.\nShe works 50 minutes.\n"
           "0.2 x 50 = $11.\nThe answer is 11.")
    row = sample_line(0, gen, False)
    got = prm.reward_target(row, "prm", "checker", "f:1")
    assert got[2] == [1.0, None, 0.0, 0.0]  # valid claim, no claim, false claim, the outcome
    assert [gen[:e].splitlines()[-1] for e in got[1]] == gen.splitlines()
    from cotjax import label_steps
    chain = label_steps.Chain(0, {**row, "gold": "10"}, prm.chain_of(gen, "gsm8k"),
                              tuple(prm.split_steps(prm.chain_of(gen, "gsm8k"))))
    written = label_steps._line(chain, {k: ["10"] for k in (1, 2, 3)},
                                {"samples": "s", "model": "m", "split": "lines",
                                 "rollouts": 1}, "gsm8k")
    assert prm.reward_target(written, "prm", "checker", "f:1") == got
    with pytest.raises(ValueError, match="f:1: no 'chain' .* Monte Carlo labels \\(hard\\) "
                                         "need `cotjax label-steps` lines"):
        prm.reward_target(row, "prm", "hard", "f:1")


@pytest.mark.parametrize("objective", ["prm", "orm"])
def test_a_chain_cut_by_the_length_limit_with_unicode_signs_is_read(objective):
    """Found on real GSM8K samples: a chain with no answer statement (cut at max_new_tokens)
    and an en dash or a times sign is read like one with a statement (normalised)."""
    gen = "Tony worked 8 hours \u2013 6 hours = 2 hours.\nThen 2 \u00d7 3 = 7 and so"
    got = prm.reward_target(sample_line(0, gen, False), objective, "checker", "f:1")
    assert [gen[:e].splitlines()[-1] for e in got[1]] == gen.splitlines()
    assert got[2] == ([1.0, 0.0] if objective == "prm" else [None, 0.0])


def test_a_checker_prm_trains_on_a_sample_directory(byte_tok, tmp_path):
    gens = ["2 + 3 = 5.\nThe answer is 5.", "2 + 3 = 6.\nThe answer is 6.",
            "Add them.\nThe answer is 5.", "4 * 2 = 8.\n8 - 1 = 7.\nThe answer is 7."]
    lines = [sample_line(p, g, c) for p, (g, c) in enumerate(zip(gens, (1, 0, 1, 1)))]
    for x in lines:
        x["correct"] = bool(x["correct"])
    (tmp_path / "samples-00000-of-00001.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines))
    c = reward_config("x", tmp_path, reward_labels="checker")
    got = sorted(tuple(e.labels[e.weights > 0]) for split in ("train", "validation")
                 for e in pipeline.load_examples(c, byte_tok, split)[0])
    assert got == sorted([(1.0, 1.0), (0.0, 0.0), (1.0,), (1.0, 1.0, 1.0)])
    c.train.reward_labels = "hard"
    with pytest.raises(ValueError, match=r"samples-00000-of-00001.jsonl:\d: no 'chain'"):
        pipeline.load_examples(c, byte_tok, "train")


def test_a_reward_objective_needs_labels(byte_tok):
    c = tiny_config("x", objective="orm")
    with pytest.raises(ValueError, match="needs --config.data.labels"):
        pipeline.load_examples(c, byte_tok, "train")


def test_eval_reranks_its_own_samples(prm_run, tmp_path):
    from cotjax import evaluate

    c = prm_run["config"].copy_and_resolve_references()
    c.model = "random"
    c.data.source = "synthetic"
    c.train.objective = "cot"
    c.eval.max_examples = 3
    c.eval.max_new_tokens = 12
    c.eval.num_samples = 3
    c.eval.batch_size = 4
    c.eval.prm = str(prm_run["workdir"])
    summary = evaluate.run_eval(c, out=str(tmp_path / "ev"), data="validation", progress=False)
    r = summary["rerank"]
    assert r["problems"] == 3 and r["samples_per_problem"] == 3
    assert {"majority", "prm_best", "prm_weighted", "pass_at_n"} <= set(r)
    assert "orm_best" not in r
    row = json.loads((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()[0])
    assert set(row["selected"]) >= {"majority", "prm_weighted"}
    assert all(0 < v < 1 for s in row["samples"] for v in s["prm"])
    c.eval.num_samples = 1
    with pytest.raises(ValueError, match="set eval.num_samples >= 2"):
        evaluate.run_eval(c, out=str(tmp_path / "ev2"), data="validation")


def test_unicode_operators_and_a_leading_space_are_read_where_they_stand(byte_tok):
    gen = " 3 \u00d7 4 = 12.\n12 \u2212 2 = 10.\nThe answer is 10."
    ends = prm.score_ends(gen)
    assert [gen[:e].splitlines()[-1].strip() for e in ends] == \
        [x.strip() for x in gen.splitlines()]
    ex, reads = tokenize.reward_example("Q?", gen, ends, [None] * 3, byte_tok, "plain")
    # the plain template's space comes from the generation, not doubled
    assert byte_tok.decode(ex.tokens[:reads[0] + 1]).endswith("Answer: 3 \u00d7 4 = 12.")
    line = label_line(0, 0, 1, 2, True)
    line["split"] = "sentences"
    with pytest.raises(ValueError, match="f:3: steps split by 'sentences', the run reads "
                                         "'lines' steps"):
        prm.reward_target(line, "prm", where="f:3")


def test_an_empty_generation_is_skipped_and_counted(tmp_path, byte_tok):
    lines = [label_line(p, 0, p, 1, True) for p in range(4)]
    lines[1]["generation"] = "  "
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = prm.read_label_rows(str(tmp_path / "x.jsonl"))
    examples, skipped = pipeline.encode_reward_rows(rows, "orm", "hard", byte_tok, "plain")
    assert len(examples) == 3 and skipped == [f"{tmp_path / 'x.jsonl'}:2: empty generation"]


def test_reward_training_starts_from_a_hf_directory_on_a_sharded_mesh(tiny_run, tmp_path):
    from cotjax import sharding

    model, _, tok, config = load.load_run_model(tiny_run["workdir"])
    weights.export_hf(model, str(tmp_path / "hf"), tok)
    c = config.copy_and_resolve_references()
    c.model = str(tmp_path / "hf")
    c.mesh.fsdp = 2
    mesh = sharding.make_mesh(c.mesh)
    m, cfg = load.load_base_model(c, mesh, head="reward")
    assert cfg.head == "reward" and float(jnp.abs(m.reward_head[...]).sum()) == 0
    assert m.reward_head[...].sharding.spec == jax.sharding.PartitionSpec("fsdp")
    np.testing.assert_array_equal(np.asarray(m.embed[...]), np.asarray(model.embed[...]))


def test_a_reward_run_resumes_only_with_its_own_targets(prm_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(prm_run["workdir"], copy)
    c = prm_run["config"].copy_and_resolve_references()
    c.train.steps = 6
    c.train.reward_labels = "soft"
    with pytest.raises(ValueError, match="began with train.reward_labels='hard'; resuming it "
                                         "with 'soft'"):
        train.train(c, copy)
    c.train.reward_labels, c.train.objective = "hard", "orm"
    with pytest.raises(ValueError, match="began with train.objective='prm'"):
        train.train(c, copy)
    with pytest.raises(ValueError, match="--step=base: the model .* has no trained reward head"):
        rerank.load_reward_model(str(prm_run["workdir"]), "base", "prm")


def test_rerank_refuses_repeated_samples(prm_run, tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    row = {**label_line(0, 0, 1, 2, True), "extracted": "6"}
    (d / "samples-00000-of-00002.jsonl").write_text(json.dumps(row) + "\n")
    (d / "samples-00001-of-00002.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="pairs repeat; give one `cotjax sample` directory"):
        rerank.run_rerank([str(d)], str(tmp_path / "o"), prm_run=str(prm_run["workdir"]))


def test_eval_refuses_a_policy_as_its_prm_before_decoding(tiny_run, tmp_path):
    from cotjax import evaluate

    c = tiny_run["config"].copy_and_resolve_references()
    c.eval.num_samples = 2
    c.eval.prm = str(tiny_run["workdir"])
    with pytest.raises(ValueError, match="is a policy .*; eval.prm needs a reward model"):
        evaluate.run_eval(c, out=str(tmp_path / "ev"), data="validation", progress=False)
    assert not (tmp_path / "ev").exists()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=30))
def test_exact_auroc_is_the_pairwise_count(points):
    scores, labels = [float(s) for s, _ in points], [y for _, y in points]
    pos = [s for s, y in points if y]
    neg = [s for s, y in points if not y]
    got = prm.auroc(scores, labels)
    if not pos or not neg:
        assert got is None
    else:
        want = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
        assert got == round(want, 4)


def _search_config(batch_size):
    from cotjax import defaults

    c = defaults.load_config("configs/gsm8k.py")  # SmolLM2-135M-Instruct, untrained: it
    c.eval.max_examples = 1  # writes its answers over several lines, so chains grow by steps
    c.eval.batch_size = batch_size
    c.eval.max_new_tokens = 96
    c.eval.beam_width, c.eval.beam_expand, c.eval.beam_steps = 2, 2, 2
    c.eval.beam_step_tokens = 32
    return c


@pytest.mark.one_device
@pytest.mark.slow
def test_beam_search_with_a_prm_does_not_depend_on_the_batch(prm_run, tmp_path):
    """`cotjax search` with SmolLM2 as the policy and the tiny PRM (it reads text, whatever
    the policy's tokenizer): per-(chain, expansion) keys make the search the same whatever the
    batch size; each kept chain's score is the PRM's score of its text; chains left open are
    whole steps; some chains grew by more than one step."""
    from cotjax import search

    runs = {}
    for bs in (3, 8):
        out = tmp_path / f"b{bs}"
        before = dict(decode.TRACE_COUNTS)
        summary = search.run_search(_search_config(bs), None, prm_run=str(prm_run["workdir"]),
                                    data="validation", out=str(out))
        # every depth reuses the engine's programs compiled at the first (prompt_slots_min)
        assert decode.TRACE_COUNTS["engine_extend"] - before.get("engine_extend", 0) <= 1
        assert summary["n"] == 1 and summary["beam_width"] == 2 and summary["drawn_tokens"] > 0
        runs[bs] = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert runs[3] == runs[8]
    scorer = search.PrmScorer(str(prm_run["workdir"]), None, [r["question"] for r in runs[3]],
                              "gsm8k", "min")
    for p, row in enumerate(runs[3]):
        assert 1 <= len(row["beam"]) <= 2
        assert [b["score"] for b in row["beam"]] == sorted((b["score"] for b in row["beam"]),
                                                           reverse=True)
        again = scorer.full([(p, b["text"]) for b in row["beam"]])
        assert [b["score"] for b in row["beam"]] == pytest.approx(again, abs=1e-4)
        for b in row["beam"]:
            if b["finish"] == "steps":
                assert b["text"].endswith("\n")
    steps = [search.step_end(b["text"]) is not None and search.step_end(
        b["text"][search.step_end(b["text"]):]) is not None for r in runs[3] for b in r["beam"]]
    assert any(steps), [b["text"] for r in runs[3] for b in r["beam"]]


@pytest.mark.slow
def test_search_scoring_benchmark_reads_candidates_both_ways_alike(prm_run, tmp_path):
    """benchmarks/search_scoring.py: one small search with SmolLM2 as the policy and the
    tiny PRM; each depth's candidates scored whole and from their parents agree."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "benchmarks/search_scoring.py", "--model=smollm2-135m-instruct",
         f"--prm={prm_run['workdir']}", "--problems=1", "--max_new_tokens=64",
         "--beam_width=2", "--beam_expand=2", "--beam_steps=2", f"--out={tmp_path}"],
        capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.splitlines()[-1])
    assert r["problems"] == 1 and r["candidates"] >= 2
    assert r["full_seconds"] > 0 and r["cached_seconds"] > 0 and r["max_abs_diff"] < 1e-4
    assert r["machine"]["backend"] == "cpu"
    assert json.loads((tmp_path / "summary.json").read_text())["score_seconds"] > 0


def test_search_refuses_a_policy_as_its_prm_before_loading(tiny_run, tmp_path):
    from cotjax import search

    c = tiny_run["config"].copy_and_resolve_references()
    with pytest.raises(ValueError, match="is a policy"):
        search.run_search(c, None, prm_run=str(tiny_run["workdir"]), data="validation",
                          out=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def _rerank_dir(out, answers, gold, scores):
    """A rerank OUT directory written from hand-made samples and reward scores."""
    groups = {p: [{"problem": p, "sample": s, "extracted": a, "correct": a == gold[p],
                   "gold": gold[p]} for s, a in enumerate(row)] for p, row in answers.items()}
    keyed = {k: {(p, s): v[p][s] for p in answers for s in range(len(answers[p]))}
             for k, v in scores.items()}
    result, final = rerank.select_all(groups, keyed, "min", "gsm8k")
    rerank.write_rerank(str(out), groups, len(next(iter(groups.values()))), keyed, final,
                        {**result, "task": "gsm8k", "prm": None, "orm": None})


def test_combine_takes_each_selector_from_the_first_rerank_that_has_it(tmp_path, capsys):
    """`cotjax rerank --combine`: a PRM rerank of three problems and an ORM rerank of the
    first two become one comparison, each selector with its own problems as n; a first run
    missing problems, and reranks of different samples, are refused with the directory."""
    from cotjax import cli

    answers = {0: ["1", "2"], 1: ["3", "3"], 2: ["5", "6"]}
    gold = {0: "2", 1: "4", 2: "5"}
    _rerank_dir(tmp_path / "prm", answers, gold,
                {"prm": {0: [[0.9, 0.2], [0.3, 0.8]], 1: [[0.5], [0.4]], 2: [[0.1], [0.7]]}})
    _rerank_dir(tmp_path / "orm", {p: answers[p] for p in (0, 1)}, gold,
                {"orm": {0: [[0.2], [0.6]], 1: [[0.5], [0.4]]}})
    cli.main(["cotjax", "rerank", f"--combine={tmp_path / 'prm'},{tmp_path / 'orm'}",
              f"--out={tmp_path / 'both'}"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    got = json.loads((tmp_path / "both" / "selection.json").read_text())
    assert got["prm_best"] == printed["prm_best"] == {"accuracy": round(1 / 3, 4), "n": 3}
    assert got["orm_best"] == {"accuracy": 0.5, "n": 2}  # problem 0's "2" (0.6)
    assert got["majority"]["n"] == 3 and got["source"]["orm_best"] == str(tmp_path / "orm")
    orm_alone = json.loads((tmp_path / "orm" / "selection.json").read_text())
    assert got["paired_vs_majority"]["orm_best"] == orm_alone["paired_vs_majority"]["orm_best"]
    assert got["within_problem_auroc"]["orm"] == orm_alone["within_problem_auroc"]["orm"]
    assert set(got["by_n"]["2"]) == set(got["source"]) and got["samples_per_problem"] == 2
    assert (tmp_path / "both" / "accuracy_vs_n.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="prm: problems the first run .*orm. lacks"):
        rerank.combine([str(tmp_path / "orm"), str(tmp_path / "prm")])
    _rerank_dir(tmp_path / "other", {0: ["1", "7"]}, gold, {"orm": {0: [[0.2], [0.6]]}})
    with pytest.raises(ValueError, match="other: problem 0's samples differ from .*prm's"):
        rerank.combine([str(tmp_path / "prm"), str(tmp_path / "other")])
    _rerank_dir(tmp_path / "three", {0: ["1", "2", "2"]}, gold, {"orm": {0: [[0.2], [0.6], [0.1]]}})
    with pytest.raises(ValueError, match="three: another task or number of samples"):
        rerank.combine([str(tmp_path / "prm"), str(tmp_path / "three")])


def test_headroom_simulates_verifiers_of_the_asked_auroc():
    """`cotjax rerank --headroom`: simulated verifiers order a right and a wrong sample of a
    problem correctly at the asked rate; one that knows nothing gives the vote and the first
    sample, a near-perfect one reaches pass@N; AUROCs outside [0.5, 1) are refused."""
    from cotjax import headroom

    rng = np.random.default_rng(0)
    groups = {}
    for p in range(60):
        right = rng.random(8) < 0.3
        answers = ["7" if r else str(int(rng.integers(1, 4))) for r in right]
        groups[p] = [{"problem": p, "sample": s, "extracted": a, "correct": bool(r), "gold": "7"}
                     for s, (a, r) in enumerate(zip(answers, right))]
    got = headroom.headroom(groups, [0.5, 0.8, 0.9999], draws=3)
    first = sum(g[0]["correct"] for g in groups.values()) / len(groups)
    assert got["by_auroc"]["0.5"]["prm_best"]["mean"] == round(first, 4)
    assert got["by_auroc"]["0.5"]["prm_weighted"]["max"] == got["majority"]
    assert abs(got["by_auroc"]["0.8"]["realised_auroc"] - 0.8) < 0.03
    assert got["by_auroc"]["0.9999"]["prm_best"]["min"] == got["pass_at_n"]
    assert got["by_auroc"]["0.9999"]["goal_met"] == 3 and got["by_auroc"]["0.5"]["goal_met"] == 0
    assert headroom.headroom(groups, [0.8], draws=3)["by_auroc"] == {"0.8": got["by_auroc"]["0.8"]}
    with pytest.raises(ValueError, match=r"AUROCs must be in \[0.5, 1\), got \[0.4\]"):
        headroom.headroom(groups, [0.4])


def test_headroom_reads_an_earlier_reranks_samples(tmp_path, capsys):
    """`cotjax rerank --headroom=... --samples=OUT`: headroom.json and its plot from the
    predictions an earlier rerank wrote; no model."""
    from cotjax import cli

    _rerank_dir(tmp_path / "free", {0: ["1", "2", "2"], 1: ["4", "3", "4"]}, {0: "1", 1: "4"}, {})
    cli.main(["cotjax", "rerank", "--headroom=0.5,0.9", f"--samples={tmp_path / 'free'}",
              f"--out={tmp_path / 'h'}"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "h" / "headroom.json").read_text())
    assert saved["majority"] == printed["majority"] == 0.5 and saved["pass_at_n"] == 1.0
    assert printed["0.5"] == 0.5 and saved["samples"] == str(tmp_path / "free")
    assert saved["by_auroc"]["0.5"]["prm_best"]["mean"] == 1.0  # both first samples are right
    assert (tmp_path / "h" / "headroom.png").stat().st_size > 1000
