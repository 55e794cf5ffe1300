"""Step labels (cotjax.prm, `cotjax label-steps`): steps split at exact spans; Monte Carlo and
checker labels on constructed cases; the command's lines on a real (tiny, random) decoder are
consistent, resume to what an uninterrupted run writes, and bad input is named."""

import json

import pytest

from cotjax import checkpoint, prm
from cotjax.label_steps import MAX_STEPS, run_label_steps
from cotjax.report import read_samples
from cotjax.steps import check_steps

CHAINS = [
    "She has 3 + 4 = 7 apples.\nThen 7 * 2 = 14 apples.\nShe eats 2, so 14 - 2 = 12.",
    "First 10 / 2 = 5.\nNext 5 + 5 = 11.",  # the second claim is wrong
    "Think about it.\nSo 6 * 7 = 42.",
]
GOLDS = ["12", "10", "42"]


def test_split_steps_gives_exact_spans_for_lines_and_sentences():
    text = "First 2+2 = 4.\n\n  Then 4*3 = 12. So 12 - 1 = 11.\nDone"
    lines = prm.split_steps(text)
    assert [text[a:b] for a, b in lines] == ["First 2+2 = 4.", "Then 4*3 = 12. So 12 - 1 = 11.",
                                             "Done"]
    sentences = prm.split_steps(text, "sentences")
    assert [text[a:b] for a, b in sentences] == ["First 2+2 = 4.", "Then 4*3 = 12.",
                                                 "So 12 - 1 = 11.", "Done"]
    assert prm.prefix_through(text, lines, 1) == "First 2+2 = 4.\n"
    assert prm.prefix_through(text, sentences, 2).endswith("Then 4*3 = 12.")
    assert prm.prefix_through(text, lines, 3) == text + "\n"  # the answer gets its own line
    assert prm.split_steps("") == [] and prm.split_steps(" \n\n ") == []
    with pytest.raises(ValueError, match="lines"):
        prm.split_steps(text, "paragraphs")


def test_checker_labels_follow_the_claims_inside_each_step():
    chain = CHAINS[1]
    spans, claims = prm.split_steps(chain), check_steps(chain).steps
    assert [prm.checker_label(s, claims) for s in spans] == [(1, "valid_claims"),
                                                              (0, "invalid_claim")]
    spans = prm.split_steps(CHAINS[2])
    assert prm.checker_label(spans[0], check_steps(CHAINS[2]).steps) == (None, "no_claim")


def test_mc_labels_on_known_answers():
    assert prm.mc_label(["12", "12.0", "$12"], "12", "gsm8k") == (1.0, 1)
    assert prm.mc_label(["11", None, "12", "13"], "12", "gsm8k") == (0.25, 1)
    assert prm.mc_label([None, "7"], "12", "gsm8k") == (0.0, 0)
    with pytest.raises(ValueError, match="at least one completion"):
        prm.mc_label([], "12", "gsm8k")


def test_agreement_counts_both_sources_by_step_kind():
    rows = [{"steps": [
        {"hard": 1, "soft": 0.5, "checker": 1, "kind": "valid_claims"},
        {"hard": 0, "soft": 0.0, "checker": 0, "kind": "invalid_claim"},
        {"hard": 1, "soft": 1.0, "checker": 0, "kind": "invalid_claim"},
        {"hard": 0, "soft": 0.0, "checker": None, "kind": "no_claim"}]}]
    a = prm.agreement(rows)
    assert a["steps"] == 4 and a["checker_labelled"] == 3 and a["agreement"] == round(2 / 3, 4)
    assert a["confusion"] == {"mc0_checker0": 1, "mc0_checker1": 0, "mc1_checker0": 1,
                              "mc1_checker1": 1}
    assert a["by_kind"]["invalid_claim"] == {"steps": 2, "mc_hard_positive": 0.5,
                                             "mc_soft_mean": 0.5}


def _samples_dir(path, config, template=None):
    path.mkdir()
    manifest = {"task": "gsm8k", "template": template or config.data.template,
                "prompting": config.eval.prompting}
    (path / "manifest.json").write_text(json.dumps(manifest))
    lines = [{"problem": p, "sample": s, "id": f"q{p}", "question": f"Problem {p}?",
              "gold": GOLDS[p], "generation": CHAINS[p] + f"\nThe answer is {GOLDS[p]}.",
              "correct": s == 0}
             for p in range(3) for s in range(2)]
    lines.append({"problem": 3, "sample": 0, "question": "?", "gold": "1",
                  "generation": "The answer is 1.", "correct": True})  # no steps
    (path / "samples-00000-of-00001.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines))
    return path


def _config(tiny_run, batch_size=4):
    config, _ = checkpoint.read_run_config(tiny_run["workdir"])
    config.eval.batch_size = batch_size
    config.eval.max_new_tokens = 6
    return config


def _lines(out):
    return {(r["problem"], r["sample"]): r
            for r in read_samples(out / "labels-00000-of-00001.jsonl")}


def test_label_steps_lines_are_consistent_and_resume_exactly(tiny_run, tmp_path):
    samples = _samples_dir(tmp_path / "samples", _config(tiny_run))
    totals = run_label_steps(_config(tiny_run), str(tiny_run["workdir"]), samples=str(samples),
                             rollouts=3, out=str(tmp_path / "a"), progress=False)
    assert totals["skipped"] == {"no_steps": 1} and totals["chains"] == 6
    assert totals["completions"] == 3 * 2 * (3 + 2 + 2)
    full = _lines(tmp_path / "a")
    assert sorted(full) == [(p, s) for p in range(3) for s in range(2)]
    for (p, _), line in full.items():
        assert [s["text"] for s in line["steps"]] == CHAINS[p].split("\n")
        assert [s["checker"] for s in line["steps"]] == {
            0: [1, 1, 1], 1: [1, 0], 2: [None, 1]}[p]
        for s in line["steps"]:
            assert len(s["answers"]) == 3
            assert (s["soft"], s["hard"]) == prm.mc_label(s["answers"], GOLDS[p], "gsm8k")
            assert line["chain"][s["span"][0]:s["span"][1]] == s["text"]
    assert json.loads((tmp_path / "a" / "agreement-00000.json").read_text())["chains"] == 6

    # killed after two chains and half of a third line, resumed with another batch size
    out = tmp_path / "b"
    out.mkdir()
    shard = (tmp_path / "a" / "labels-00000-of-00001.jsonl").read_text().splitlines(True)
    (out / "manifest.json").write_text((tmp_path / "a" / "manifest.json").read_text())
    (out / "labels-00000-of-00001.jsonl").write_text("".join(shard[:2]) + shard[2][:40])
    run_label_steps(_config(tiny_run, batch_size=2), str(tiny_run["workdir"]),
                    samples=str(samples), rollouts=3, out=str(out), progress=False)
    assert _lines(out) == full


def test_label_steps_refuses_samples_prompted_otherwise(tiny_run, tmp_path):
    config = _config(tiny_run)
    samples = _samples_dir(tmp_path / "samples", config, template="chat")
    with pytest.raises(ValueError, match="prompted with template='chat'"):
        run_label_steps(config, str(tiny_run["workdir"]), samples=str(samples), rollouts=2,
                        out=str(tmp_path / "out"), progress=False)
    with pytest.raises(ValueError, match="no manifest.json"):
        run_label_steps(config, str(tiny_run["workdir"]), samples=str(tmp_path), rollouts=2,
                        out=str(tmp_path / "out"), progress=False)
    assert MAX_STEPS >= 32
