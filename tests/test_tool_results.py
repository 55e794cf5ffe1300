"""The sampling benchmark's and the calculator check's committed files, and the figures
docs/sample_distill.md and docs/calculator.md quote from them."""

import gzip
import hashlib
import json
import math
import pathlib
import re
import statistics

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CALC = ROOT / "results/calculator"


def _doc(name):
    return re.sub(r"\s+", " ", (ROOT / "docs" / name).read_text().replace("**", ""))


def _readme():
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _jsonl(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.parametrize("name", ["cpu", "epyc_zen5", "epyc_zen3"])
def test_sample_benchmark_figures(name):
    lines = _jsonl(ROOT / f"results/distill/sample_throughput_{name}.jsonl")
    config, last = lines[0], lines[-1]
    assert (config["problems"], config["k"], config["new_tokens"], config["rows"]) == (64, 8, 256, 64)
    systems = {line["system"]: line for line in lines if "system" in line}
    for name, key in (("engine", "engine_tokens_per_s"), ("static", "static_tokens_per_s"),
                      ("transformers", "hf_tokens_per_s")):
        s = systems[name]
        assert s["samples"] == 512
        assert abs(s["useful_tokens"] / s["seconds"] - last[key]) < 0.06
    assert round(last["engine_tokens_per_s"] / last["static_tokens_per_s"], 3) == last["ratio_vs_static"]
    agreement = next(line for line in lines if line.get("event") == "agreement")
    doc = _doc("sample_distill.md")
    row = (f"{last['engine_tokens_per_s']} ({systems['engine']['seconds']:.0f} s) | "
           f"{last['static_tokens_per_s']} ({systems['static']['seconds']:.0f} s) | "
           f"{last['hf_tokens_per_s']} ({systems['transformers']['seconds']:.0f} s) | "
           f"{last['ratio_vs_static']:.2f}× | {last['ratio_vs_hf']:.2f}×")
    assert row in doc
    assert f"{agreement['identical_samples']} of the {agreement['samples']} samples" in doc
    assert f"{last['ratio_vs_hf']:.2f}x" in _readme()  # the README's sentence under Speed


def test_calculator_check_figures():
    without = json.loads((CALC / "quickstart_without/summary.json").read_text())
    with_ = json.loads((CALC / "quickstart_with/summary.json").read_text())
    doc = _doc("calculator.md")
    for s in (without, with_):
        share = f"{100 * s['steps_valid'] / s['steps_total']:.1f}%"
        assert f"{s['steps_valid']} of {s['steps_total']} ({share})" in doc
        assert f"{s['decode_seconds']:.1f} s, {s['greedy_tokens_per_s']:.1f} tokens/s" in doc
    assert f"{with_['calculator_calls']} ({with_['calculator_changed']})" in doc
    assert (without["finished_length"], with_["finished_length"]) == (25, 29)
    # every claim the calculator completed holds; the invalid ones were cut by the length limit
    for row in _jsonl(CALC / "quickstart_with/predictions.jsonl"):
        sites = {c["expression"] for c in row["calculator_calls"]}
        for step in row["steps"]:
            if step["expression"].strip() in sites and not step["ok"]:
                assert row["finish"] == "length"
                assert step["span"][1] == len(row["generation"].rstrip())


def test_the_engine_wrote_the_static_paths_greedy_text():
    old = _jsonl(ROOT / "results/quickstart/predictions.jsonl")
    new = _jsonl(CALC / "quickstart_without/predictions.jsonl")
    assert [r["generation"] for r in old] == [r["generation"] for r in new]


def test_faithfulness_experiment_figures():
    """results/faithfulness: the table equals each model's summary, the summaries are what
    their predictions' per-problem interventions add up to, and docs/faithfulness.md quotes them."""
    root = ROOT / "results/faithfulness"
    table = json.loads((root / "summary.json").read_text())
    doc = _doc("faithfulness.md")
    assert set(table) == {"smollm2_base_zero_shot", "smollm2_cot_1k", "gemma3_cot_1k", "smollm2_cot",
                          "gemma3_cot"}
    for label, row in table.items():
        s = json.loads((root / label / "summary.json").read_text())
        for key in ("early_answering_aoc", "corrupted_step_answer_changed",
                    "corrupted_step_follows_chain", "filler_accuracy", "accuracy", "n"):
            assert row[key] == s[key], (label, key)
        faith = [r["faithfulness"] for r in _jsonl(root / label / "predictions.jsonl")]
        used = [f for f in faith if f["applicable"]]
        assert len(faith) == s["n"] == 100 and len(used) == s["faithfulness_n"]
        aoc = sum(f["early_answering_aoc"] for f in used) / len(used)
        assert round(aoc, 4) == s["early_answering_aoc"]
        done = [c for f in used for c in f["corrupted"] if c["applicable"]]
        reach = [c for c in done if c["implied"] is not None]
        assert len(done) == s["corrupted_step_n"] and len(reach) == s["corrupted_step_reaches_answer"]
        assert round(sum(c["answer_changed"] for c in done) / len(done), 4) == \
            s["corrupted_step_answer_changed"]
        assert round(sum(c["follows_chain"] for c in reach) / len(reach), 4) == \
            s["corrupted_step_follows_chain"]
        pos = s["corrupted_step_by_position"]
        quoted = (f"| {s['early_answering_aoc']:.3f} | {s['corrupted_step_answer_changed']:.3f} "
                  f"(of {len(done)}) | {s['corrupted_step_follows_chain']:.3f} of {len(reach)} ("
                  + " / ".join(f"{pos[p]['follows_chain']:.3f}" for p in ("first", "middle", "last"))
                  + f") | {s['filler_accuracy']:.3f} / {s['no_chain_accuracy']:.3f} / "
                  f"{s['full_chain_accuracy']:.3f} | {s['faithfulness_answer_differs']:.3f} |")
        assert quoted in doc, quoted
    # the filler test of the chosen CoT model, as docs/faithfulness.md and the README quote it
    s = json.loads((root / "smollm2_cot/summary.json").read_text())
    f = s["filler_vs_full_chain"]
    n = s["faithfulness_n"]
    full, filler, none = (round(s[k] * n) for k in ("full_chain_accuracy", "filler_accuracy",
                                                    "no_chain_accuracy"))
    assert (f"gets {full} of the {n} problems with a chain right when it writes the chain, {filler} "
            f"when the chain is replaced by filler of the same length and {none} when it must answer "
            f"at once (filler against the full chain: {f['only_a']} right only with filler, "
            f"{f['only_b']} only with the chain, McNemar p = {f['mcnemar_p']:.3f})") in doc
    g = json.loads((root / "gemma3_cot/summary.json").read_text())
    gf, gn = g["filler_vs_full_chain"], g["faithfulness_n"]
    counts = [round(g[k] * gn) for k in ("full_chain_accuracy", "filler_accuracy",
                                          "no_chain_accuracy")]
    assert (f"It gets {counts[0]} of the {gn} problems with a chain right when it writes the "
            f"chain, {counts[1]} with filler of the same length and {counts[2]} with no chain "
            f"(filler against the full chain: {gf['only_a']} right only with filler, "
            f"{gf['only_b']} only with the chain, McNemar p = {gf['mcnemar_p']:.3f})") in doc
    readme = _readme()
    assert (f"{full} of {n} right with it, {filler} with filler in its place "
            f"(p = {f['mcnemar_p']:.3f}), {none} with no chain; AOC "
            f"{s['early_answering_aoc']:.2f}") in readme


def test_step_label_run_figures():
    """results/prm/labels_cot_1k: the agreement file is what the label lines add up to, each
    step's labels follow from its rollouts and claims, and docs/process_supervision.md quotes it."""
    from cotjax import prm
    from cotjax.steps import check_steps

    root = ROOT / "results/prm/labels_cot_1k"
    lines = _jsonl(root / "labels-00000-of-00001.jsonl")
    agree = json.loads((root / "agreement-00000.json").read_text())
    assert prm.agreement(lines) == agree and agree["chains"] == len(lines) == 64
    for line in lines:
        claims = check_steps(line["chain"]).steps
        for s in line["steps"]:
            assert line["chain"][s["span"][0]:s["span"][1]] == s["text"]
            assert (s["checker"], s["kind"]) == prm.checker_label(tuple(s["span"]), claims)
            assert (s["soft"], s["hard"]) == prm.mc_label(s["answers"], line["gold"], "gsm8k")
    k = agree["by_kind"]
    row = (f"| {agree['steps']} | {agree['mc_hard_positive']:.3f} | {agree['checker_positive']:.3f} "
           f"(of {agree['checker_labelled']}) | {agree['agreement']:.3f} | "
           f"{k['valid_claims']['mc_hard_positive']:.3f} (of {k['valid_claims']['steps']}) / "
           f"{k['invalid_claim']['mc_hard_positive']:.3f} (of {k['invalid_claim']['steps']}) / "
           f"{k['no_claim']['mc_hard_positive']:.3f} (of {k['no_claim']['steps']}) |")
    assert row in _doc("process_supervision.md"), row


PRM_RUNS = {"synthetic": "2 epochs, lr 5e-5", "synthetic_e6": "6 epochs, lr 1e-4",
            "synthetic_x3": "3x the labels (864 chains), 2 epochs, lr 5e-5, PRM only",
            "synthetic_x3_checker": "3x the labels, the checker's labels (864 chains), 2 epochs, "
                                    "lr 5e-5, PRM only"}


@pytest.mark.parametrize("name", sorted(PRM_RUNS))
def test_process_supervision_selection_figures(name):
    """results/prm/<run>: selection.json is what its predictions' scores give (every selector,
    paired tests, AUROCs), the predictions hold the committed samples' answers, and
    docs/process_supervision.md quotes the row."""
    import gzip

    from cotjax import rerank

    root = ROOT / "results/prm" / name
    if not root.exists():
        pytest.skip(f"{root} not committed")
    saved = json.loads((root / "selection.json").read_text())
    assert rerank.reselect(str(root)) == saved
    samples = [json.loads(x) for x in gzip.open(
        ROOT / "results/prm/synthetic/eval_samples/samples-00000-of-00001.jsonl.gz", "rt")]
    answers = {(s["problem"], s["sample"]): (s["extracted"], s["correct"]) for s in samples}
    preds = _jsonl(root / "predictions.jsonl")
    assert len(preds) == saved["problems"] == 120
    for p in preds:
        for s in p["samples"]:
            assert answers[(p["problem"], s["sample"])] == (s["answer"], s["correct"])
    w = saved["paired_vs_majority"]["prm_weighted"]
    orm = "orm_best" in saved  # the 3x run trained no ORM
    row = (f"| {PRM_RUNS[name]} | {saved['majority']['accuracy']:.3f} | "
           f"{saved['orm_best']['accuracy'] if orm else '-':{'.3f' if orm else ''}} | "
           f"{saved['prm_best']['accuracy']:.3f} | "
           f"{saved['prm_weighted']['accuracy']:.3f} | {saved['pass_at_n']['accuracy']:.3f} | "
           f"+{w['only_a']} / -{w['only_b']}, p = {w['mcnemar_p']:.2f} | "
           f"{saved['within_problem_auroc']['prm_min']['mean']:.2f} / "
           + (f"{saved['within_problem_auroc']['orm']['mean']:.2f} |" if orm else "- |"))
    assert row in _doc("process_supervision.md"), row


def test_the_checker_label_prm_is_the_committed_run():
    root = ROOT / "results/prm/synthetic_x3_checker"
    config = json.loads((root / "prm_config.json").read_text())
    assert (config["train"]["objective"], config["train"]["reward_labels"]) == ("prm", "checker")
    trained = json.loads((root / "prm_train.json").read_text())
    assert trained["data/examples"] == 864
    assert (f"held-out label AUROC {trained['val/auroc']:.2f}, label accuracy "
            f"{trained['val/label_acc']:.2f}") in _doc("process_supervision.md")


def test_checked_majority_on_the_committed_synthetic_samples():
    """The model-free verifier (the vote of the samples whose claims all hold) on the
    committed 120 x 16 evaluation samples: the figures docs/process_supervision.md quotes."""
    import gzip

    from cotjax import rerank

    rows = [json.loads(x) for x in gzip.open(
        ROOT / "results/prm/synthetic/eval_samples/samples-00000-of-00001.jsonl.gz", "rt")]
    groups = {p: g[:16] for p, g in list(rerank.by_problem(rows).items())[:120]}
    result, _ = rerank.select_all(groups, {}, "min", "gsm8k")
    w = result["paired_vs_majority"]["checked_majority"]
    assert result["majority"]["accuracy"] == 0.4  # the committed runs' majority
    assert sum(map(len, groups.values())) == 1920
    checked = [r for g in groups.values() for r in g if r["all_steps_valid"]]
    quote = (f"checked majority {result['checked_majority']['accuracy']:.3f} against majority "
             f"{result['majority']['accuracy']:.3f} (+{w['only_a']} / -{w['only_b']}, "
             f"p = {w['mcnemar_p']:.3f}); {len(checked)} of the 1,920 samples have every claim "
             f"true, {sum(r['correct'] for r in checked)} of them right")
    assert quote in _doc("process_supervision.md"), quote


def test_gsm8k_checked_majority_is_the_committed_teacher_samples():
    """results/prm/gsm8k_checker: `cotjax rerank` with no reward model on the chosen CoT
    model's committed maj@8 samples; its selection is what its predictions give, every
    sample's answer is the committed one, and docs/process_supervision.md quotes it."""
    from cotjax import rerank

    root = ROOT / "results/prm/gsm8k_checker"
    saved = json.loads((root / "selection.json").read_text())
    assert rerank.reselect(str(root)) == saved
    evals = _jsonl(ROOT / "results/gsm8k/cot_lr2e-4_ep2_maj8_predictions.jsonl")
    preds = _jsonl(root / "predictions.jsonl")
    assert len(preds) == len(evals) == saved["problems"] == 500
    for p, e in zip(preds, evals, strict=True):
        assert [s["correct"] for s in p["samples"]] == [s["correct"] for s in e["samples"]]
    assert saved["majority"]["accuracy"] == json.loads((
        ROOT / "results/gsm8k/cot_lr2e-4_ep2_maj8_summary.json").read_text())["maj_accuracy"]
    w = saved["paired_vs_majority"]["checked_majority"]
    quote = (f"| {saved['majority']['accuracy']:.3f} | {saved['checked_majority']['accuracy']:.3f}"
             f" | {saved['pass_at_n']['accuracy']:.3f} | +{w['only_a']} / -{w['only_b']}, "
             f"p = {w['mcnemar_p']:.3f} |")
    assert quote in _doc("process_supervision.md"), quote
    samples = [s for p in preds for s in p["samples"]]
    checked = [s for s in samples if s["all_steps_valid"]]
    quote = (f"{len(checked):,} of the {len(samples):,} samples have every claim true, "
             f"{sum(s['correct'] for s in checked)} of the {sum(s['correct'] for s in samples)} "
             "right ones among them")
    assert quote in _doc("process_supervision.md"), quote
    wrong_checked = sum(not s["correct"] for s in checked)
    assert f"{wrong_checked:,} wrong samples have every claim true" in \
        _doc("process_supervision.md")


def test_gsm8k_n16_model_free_selection_is_the_committed_samples():
    """results/prm/gsm8k: the GSM8K experiment's 500 x 16 evaluation samples (committed,
    gzipped) and `cotjax rerank` without a reward model on them: the selection is what the
    predictions give, every sample's answer and check is the committed sample's, and
    docs/process_supervision.md quotes the table and the counts."""
    from cotjax import rerank

    root = ROOT / "results/prm/gsm8k"
    manifest = json.loads((root / "eval_samples/manifest.json").read_text())
    assert (manifest["model"], manifest["problems"], manifest["k"], manifest["temperature"]) == (
        "runs/sweep/cot_lr2e-4_ep2 step 688", 500, 16, 0.7)
    samples = [json.loads(x) for x in gzip.open(
        root / "eval_samples/samples-00000-of-00001.jsonl.gz", "rt")]
    assert len(samples) == 8000
    saved = json.loads((root / "selection.json").read_text())
    assert rerank.reselect(str(root)) == saved
    by_key = {(s["problem"], s["sample"]): s for s in samples}
    preds = _jsonl(root / "predictions.jsonl")
    assert len(preds) == saved["problems"] == 500 and saved["samples_per_problem"] == 16
    for p in preds:
        for s in p["samples"]:
            line = by_key[(p["problem"], s["sample"])]
            assert (s["answer"], s["correct"], s["all_steps_valid"]) == (
                line["extracted"], line["correct"], line["all_steps_valid"])
    doc = _doc("process_supervision.md")
    by_n = saved["by_n"]
    w = saved["paired_vs_majority"]["checked_majority"]
    for name, label, tail in (
            ("majority", "majority", " |"),
            ("checked_majority", "checked majority",
             f" +{w['only_a']} / -{w['only_b']}, p = {w['mcnemar_p']:.3f} |"),
            ("pass_at_n", "pass@N", " |")):
        row = f"| {label} | " + " | ".join(f"{by_n[n][name]:.3f}" for n in
                                          ("1", "2", "4", "8", "16")) + " |" + tail
        assert row in doc, row
    right = [s for s in samples if s["correct"]]
    checked = [s for s in samples if s["all_steps_valid"]]
    quote = (f"One sample is right {100 * len(right) / len(samples):.1f}% of the time "
             f"({len(right)} of 8,000; greedy decoding gets 8.4%). {len(checked):,} of the 8,000 "
             f"samples have every claim true, {sum(s['correct'] for s in checked)} of the "
             f"{len(right)} right ones among them, and {sum(not s['correct'] for s in checked):,} "
             "wrong samples have every claim true")
    assert quote in doc, quote
    assert f"{sum(s['new_tokens'] for s in samples):,} tokens" in doc


def _gsm8k_model_free_samples():
    """{(problem, sample): the sample as results/prm/gsm8k's model-free rerank wrote it}."""
    return {(p["problem"], s["sample"]): s
            for p in _jsonl(ROOT / "results/prm/gsm8k/predictions.jsonl") for s in p["samples"]}


def _gsm8k_prm_rerank(root):
    """(selection, predictions) of a PRM's rerank of the committed GSM8K 500 x 16 samples, after
    checking that the selection is what the predictions' step scores give, the model-free
    selectors are the model-free run's, and every sample is the committed one."""
    from cotjax import rerank

    saved = json.loads((root / "selection.json").read_text())
    assert rerank.reselect(str(root)) == saved and saved["aggregate"] == "min"
    free = json.loads((ROOT / "results/prm/gsm8k/selection.json").read_text())
    for s in ("majority", "checked_majority", "pass_at_n"):
        assert saved[s] == free[s]
    committed = _gsm8k_model_free_samples()
    preds = _jsonl(root / "predictions.jsonl")
    assert len(preds) == 500
    for p in preds:
        for s in p["samples"]:
            assert {k: v for k, v in s.items() if k != "prm"} == committed[(p["problem"], s["sample"])]
            assert len(s["prm"]) >= 1 and all(0 < x < 1 for x in s["prm"])
    return saved, preds


def test_gsm8k_checker_prm_rerank_is_the_committed_run():
    """results/prm/gsm8k_free: the PRM trained on the checker's labels of 2,000 GSM8K chains,
    reranking the committed 500 x 16 samples: its selection (both aggregates the doc quotes) is
    what the predictions' step scores give, the model-free selectors are those of the
    model-free run, and docs/process_supervision.md quotes the table and the training."""
    from cotjax import rerank

    root = ROOT / "results/prm/gsm8k_free"
    config = json.loads((root / "prm_config.json").read_text())
    assert (config["train"]["objective"], config["train"]["reward_labels"],
            config["data"]["labels"]) == ("prm", "checker", "runs/prm_gsm8k/label_samples")
    trained = json.loads((root / "prm_train.json").read_text())
    assert (trained["data/read"], trained["data/examples"]) == (2000, 1800)
    saved, preds = _gsm8k_prm_rerank(root)
    doc = _doc("process_supervision.md")
    auroc = saved["within_problem_auroc"]
    for how, tail in (("min", f" {auroc['prm_min']['mean']:.2f} / {auroc['prm_prod']['mean']:.2f} |"),
                      ("prod", " |")):
        d = rerank.reselect(str(root), how)
        w = d["paired_vs_majority"]["prm_weighted"]
        row = (f"{how}` | {d['majority']['accuracy']:.3f} | {d['checked_majority']['accuracy']:.3f} | "
               f"{d['prm_best']['accuracy']:.3f} | {d['prm_weighted']['accuracy']:.3f} | "
               f"{d['pass_at_n']['accuracy']:.3f} | +{w['only_a']} / -{w['only_b']}, "
               f"p = {w['mcnemar_p']:.2f} |" + tail)
        assert row in doc, row
    assert (f"held-out label AUROC {trained['val/auroc']:.2f}, label accuracy "
            f"{trained['val/label_acc']:.2f} against {trained['val/label_pos_frac']:.2f} positive"
            ) in doc
    samples = [s for p in preds for s in p["samples"]]
    at_min = sum(min(s["prm"]) == s["prm"][-1] for s in samples)
    assert f"is the chain's minimum in {at_min:,} of the 8,000" in doc
    assert f"product of step scores has AUROC {saved['sample_auroc']['prm_prod']:.2f}" in doc
    # aggregate `step_min`: `min` without the end-of-generation score (trained on the outcome)
    d = rerank.reselect(str(root), "step_min")
    w = d["paired_vs_majority"]["prm_weighted"]
    quote = (f"PRM-best {d['prm_best']['accuracy']:.3f}, PRM-weighted {d['prm_weighted']['accuracy']:.3f}"
             f" (+{w['only_a']} / -{w['only_b']}, p = {w['mcnemar_p']:.2f}), within-problem AUROC "
             f"{auroc['prm_step_min']['mean']:.2f}.")
    assert quote in doc, quote


def test_gsm8k_orm_rerank_on_the_first_250_problems():
    """results/prm/gsm8k_orm_250: the ORM trained on the outcome of the same 2,000 GSM8K chains,
    reranking the first 250 problems' committed samples: selection from the predictions, every
    sample the committed one, and docs/process_supervision.md quotes the row and the training."""
    from cotjax import rerank

    root = ROOT / "results/prm/gsm8k_orm_250"
    config = json.loads((root / "orm_config.json").read_text())
    assert (config["train"]["objective"], config["data"]["labels"]) == (
        "orm", "runs/prm_gsm8k/label_samples")
    trained = json.loads((root / "orm_train.json").read_text())
    assert (trained["data/read"], trained["data/examples"]) == (2000, 1800)
    saved = json.loads((root / "selection.json").read_text())
    assert rerank.reselect(str(root)) == saved and saved["problems"] == 250
    committed = _gsm8k_model_free_samples()
    preds = _jsonl(root / "predictions.jsonl")
    assert [p["problem"] for p in preds] == list(range(250))
    for p in preds:
        for s in p["samples"]:
            assert {k: v for k, v in s.items() if k != "orm"} == committed[(p["problem"], s["sample"])]
    w = saved["paired_vs_majority"]["orm_best"]
    row = (f"| ORM on the outcome, first 250 problems | {saved['majority']['accuracy']:.3f} | "
           f"{saved['checked_majority']['accuracy']:.3f} | {saved['orm_best']['accuracy']:.3f} | "
           f"{saved['pass_at_n']['accuracy']:.3f} | +{w['only_a']} / -{w['only_b']}, "
           f"p = {w['mcnemar_p']:.3f} | {saved['within_problem_auroc']['orm']['mean']:.2f} |")
    doc = _doc("process_supervision.md")
    assert row in doc, row
    assert (f"held-out AUROC {trained['val/auroc']:.2f}, accuracy {trained['val/label_acc']:.2f} "
            f"against {trained['val/label_pos_frac']:.2f} positive") in doc


def test_the_issue_selection_file_combines_the_mc_prm_and_orm_reranks():
    """results/prm/selection.json: `cotjax rerank --combine` of the MC-label PRM's rerank of all
    500 problems and the ORM's of the first 250, each selector {accuracy, n} as its source run
    has it, the PRM-weighted test against majority that run's, and the doc's table."""
    from cotjax import rerank

    saved = json.loads((ROOT / "results/prm/selection.json").read_text())
    assert list(saved["runs"]) == ["results/prm/gsm8k_mc", "results/prm/gsm8k_orm_250"]
    assert rerank.combine([str(ROOT / r) for r in saved["runs"]]) == {
        **saved, "source": {s: str(ROOT / r) for s, r in saved["source"].items()},
        "runs": {str(ROOT / r): v for r, v in saved["runs"].items()}}
    for key in ("majority", "orm_best", "prm_best", "prm_weighted", "pass_at_n"):
        assert set(saved[key]) == {"accuracy", "n"}
        assert saved[key] == json.loads((ROOT / saved["source"][key] / "selection.json")
                                        .read_text())[key]
    assert (saved["orm_best"]["n"], saved["prm_weighted"]["n"]) == (250, 500)
    mc = json.loads((ROOT / "results/prm/gsm8k_mc/selection.json").read_text())
    assert saved["mcnemar_p"] == mc["mcnemar_p"] and saved["aggregate"] == "min"
    doc = _doc("process_supervision.md")
    w, o = saved["paired_vs_majority"]["prm_weighted"], saved["paired_vs_majority"]["orm_best"]
    c, b = saved["paired_vs_majority"]["checked_majority"], saved["paired_vs_majority"]["prm_best"]
    assert b["mcnemar_p"] < 0.001
    for row in (f"| majority | {saved['majority']['accuracy']:.3f} | 500 | |",
                f"| checked majority | {saved['checked_majority']['accuracy']:.3f} | 500 | "
                f"+{c['only_a']} / -{c['only_b']}, p = {c['mcnemar_p']:.2f} |",
                f"| PRM-best | {saved['prm_best']['accuracy']:.3f} | 500 | +{b['only_a']} / "
                f"-{b['only_b']}, p < 0.001 |",
                f"| pass@16 | {saved['pass_at_n']['accuracy']:.3f} | 500 | |",
                f"| ORM-best | {saved['orm_best']['accuracy']:.3f} | 250 | +{o['only_a']} / "
                f"-{o['only_b']}, p = {o['mcnemar_p']:.3f} (majority 0.132 on these 250) |",
                f"| PRM-weighted | {saved['prm_weighted']['accuracy']:.3f} | 500 | "
                f"+{w['only_a']} / -{w['only_b']}, p = {w['mcnemar_p']:.2f} |"):
        assert row in doc, row
    weighted = [json.loads((ROOT / f"results/prm/{r}/selection.json").read_text())
                ["prm_weighted"]["accuracy"] for r in ("gsm8k_free", "gsm8k_mc", "gsm8k_mc_base6")]
    assert f"PRM-weighted@16 {min(weighted):.3f} to {max(weighted):.3f};" in _readme()
    assert (f"ORM-best@16 {saved['orm_best']['accuracy']:.3f} on the first 250 problems; all "
            "selectors in `results/prm/selection.json`") in _readme()


@pytest.mark.parametrize("name, label", [("gsm8k", "GSM8K"), ("synthetic", "synthetic")])
def test_verifier_headroom_is_the_committed_simulation(name, label):
    """results/prm/headroom/<run>: the simulated verifiers give the committed figures again
    (seeded draws), and the doc's table rows and prose are those figures; the real reward
    models' within-problem AUROCs the doc compares them with are the committed ones."""
    from cotjax import headroom, rerank

    saved = json.loads((ROOT / f"results/prm/headroom/{name}/headroom.json").read_text())
    assert saved["samples"] == f"results/prm/{name}" and saved["draws"] == 20
    groups, _, _ = rerank.read_rerank(str(ROOT / saved["samples"]))
    again = headroom.headroom(groups, [float(a) for a in saved["by_auroc"]])
    assert {"samples": saved["samples"], **again} == saved
    b = saved["by_auroc"]
    doc = _doc("process_supervision.md")
    for what, cell in (
            ("verifier-weighted@16 (mean of 20)", lambda v: f"{v['prm_weighted']['mean']:.3f}"),
            ("verifier-best@16", lambda v: f"{v['prm_best']['mean']:.3f}"),
            ("draws meeting the goal", lambda v: str(v["goal_met"]))):
        row = f"| {label}: {what} | " + " | ".join(cell(v) for v in b.values()) + " |"
        assert row in doc, row
    assert f"majority {saved['majority']:.3f}, pass@16 {saved['pass_at_n']:.3f}" in doc
    if name == "gsm8k":
        assert (b["0.65"]["goal_met"], b["0.7"]["goal_met"], b["0.55"]["goal_met"]) == (10, 18, 0)
        assert round(b["0.55"]["prm_weighted"]["mean"] - saved["majority"], 4) <= 0.005
        within = [json.loads((ROOT / f"results/prm/{r}/selection.json").read_text())
                  ["within_problem_auroc"] for r in ("gsm8k_free", "gsm8k_mc", "gsm8k_mc_base6",
                                                     "gsm8k_orm_250")]
        means = [v["mean"] for w in within for v in w.values()]
        assert (round(min(means), 2), round(max(means), 2)) == (0.47, 0.56)
        assert ("meet it from a within-problem AUROC of about 0.65-0.70, and the models trained "
                "here reach 0.47-0.56") in _readme()
        sel = [json.loads((ROOT / f"results/prm/{r}/selection.json").read_text())
               for r in ("gsm8k_free", "gsm8k_mc", "gsm8k_mc_base6")]
        pairs = [(d["within_problem_auroc"][f"prm_{how}"]["mean"],
                  d["by_aggregate"][how]["prm_weighted"]) for d in sel for how in ("prod", "step_min")]
        quote = (f"GSM8K PRM-weighted {min(w for _, w in pairs):.3f}-{max(w for _, w in pairs):.3f} "
                 "with the `prod` and `step_min` scores, whose within-problem AUROC is "
                 f"{min(a for a, _ in pairs):.2f}-{max(a for a, _ in pairs):.2f}")
        assert quote in doc, quote
    else:
        assert (b["0.75"]["goal_met"], b["0.8"]["goal_met"]) == (9, 17)
        means = [v["mean"] for r in ("synthetic", "synthetic_e6", "synthetic_x3",
                                     "synthetic_x3_checker")
                 for v in json.loads((ROOT / f"results/prm/{r}/selection.json").read_text())
                 ["within_problem_auroc"].values()]
        assert "AUROC 0.47-0.56 on GSM8K, 0.51-0.66 on the synthetic task" in doc
        assert (round(min(means), 2), round(max(means), 2)) == (0.51, 0.66)
        assert f"3 points there are under {math.ceil(0.03 * saved['problems'])} of 120" in doc
        assert f"{b['0.65']['prm_weighted']['mean']:.3f} at 0.65" in doc


def _positive(chains):
    """The share of hard MC labels that are 1 over the steps of labelled chains."""
    steps = [s["hard"] for x in chains for s in x["steps"]]
    return sum(steps) / len(steps)

def test_gsm8k_mc_label_prm_rerank_is_the_committed_run():
    """results/prm/gsm8k_mc: Monte Carlo labels of 512 GSM8K chains (8 rollouts a step), a PRM
    trained on them, reranking the committed 500 x 16 samples: the labels add up to the
    agreement file and follow from their rollouts, the selection (three aggregates) is what the
    predictions' step scores give, every sample is the committed one, and
    docs/process_supervision.md quotes the labels, the training and the table."""
    from cotjax import prm, rerank

    root = ROOT / "results/prm/gsm8k_mc"
    lines = [json.loads(x) for x in gzip.open(root / "labels/labels-00000-of-00001.jsonl.gz", "rt")]
    agree = json.loads((root / "agreement-00000.json").read_text())
    assert prm.agreement(lines) == agree and agree["chains"] == len(lines) == 512
    for line in lines:
        assert len(line["steps"]) >= 1 and line["rollouts"] == 8
        for s in line["steps"]:
            assert line["chain"][s["span"][0]:s["span"][1]] == s["text"] and len(s["answers"]) == 8
            assert (s["soft"], s["hard"]) == prm.mc_label(s["answers"], line["gold"], "gsm8k")
    right = [x for x in lines if x["correct"]]
    wrong = [x for x in lines if not x["correct"]]
    recoverable = sum(any(s["hard"] for s in x["steps"]) for x in wrong)
    problems = {x["problem"] for x in lines}
    positive = {x["problem"] for x in lines if any(s["hard"] for s in x["steps"])}
    totals = json.loads((root / "labels.json").read_text())
    assert (totals["completions"], totals["steps"]) == (8 * agree["steps"], agree["steps"])
    config = json.loads((root / "prm_config.json").read_text())
    assert (config["train"]["objective"], config["train"]["reward_labels"],
            config["data"]["labels"]) == ("prm", "hard", "runs/prm_gsm8k/labels")
    trained = json.loads((root / "prm_train.json").read_text())
    assert trained["data/read"] == 512
    saved, preds = _gsm8k_prm_rerank(root)
    doc = _doc("process_supervision.md")
    k = agree["by_kind"]
    row = (f"| {agree['chains']} | {agree['steps']:,} | {agree['mc_hard_positive']:.3f} | "
           f"{agree['checker_positive']:.3f} | {agree['agreement']:.3f} | "
           f"{k['valid_claims']['mc_hard_positive']:.3f} (of {k['valid_claims']['steps']:,}) / "
           f"{k['invalid_claim']['mc_hard_positive']:.3f} (of {k['invalid_claim']['steps']}) |")
    assert row in doc, row
    for quote in (f"the first {len(problems)} training problems, 4 chains each; {len(right)} of them right",
                  f"{totals['completions']:,} completions, {totals['new_tokens']:,} tokens, "
                  f"{totals['seconds']:,.0f} s", f"{recoverable} of the {len(wrong)} wrong chains",
                  f"{len(positive)} of the {len(problems)} problems have a positive step",
                  f"{k['invalid_claim']['mc_hard_positive']:.1%} of the time, after a step whose "
                  f"claims hold {k['valid_claims']['mc_hard_positive']:.1%}",
                  f"{agree['confusion']['mc0_checker1']} steps the checker passes",
                  f"Steps of right chains are positive {_positive(right):.0%} of the time, of wrong "
                  f"chains {_positive(wrong):.0%}"):
        assert quote in doc, quote
    positives = [s for x in lines for s in x["steps"] if s["hard"]]
    one_of_8 = sum(s["soft"] == 0.125 for s in positives)
    samples = [s for p in preds for s in p["samples"]]
    at_end = sum(min(s["prm"]) == s["prm"][-1] for s in samples)
    for quote in (f"here {len(positives)} steps of all {agree['steps']:,} are positive, and {one_of_8} of "
                  f"the {len(positives)} positive steps are 1 of 8 rollouts",
                  f"minimum in {at_end:,} of the 8,000"):
        assert quote in doc, quote
    for how in ("min", "step_min", "prod"):
        d = rerank.reselect(str(root), how)
        w = d["paired_vs_majority"]["prm_weighted"]
        row = (f"`{how}` | {d['prm_best']['accuracy']:.3f} | {d['prm_weighted']['accuracy']:.3f} | "
               f"+{w['only_a']} / -{w['only_b']}, p = {w['mcnemar_p']:.2f} | "
               f"{d['within_problem_auroc'][f'prm_{how}']['mean']:.2f} |")
        assert row in doc, row
    assert (f"held-out label AUROC {trained['val/auroc']:.2f}, label accuracy "
            f"{trained['val/label_acc']:.2f} against {trained['val/label_pos_frac']:.2f} positive"
            ) in doc


def test_gsm8k_mc_label_prm_from_the_base_model_is_the_committed_run():
    """results/prm/gsm8k_mc_base6: the same Monte Carlo labels, a PRM from the base model for 6
    epochs at lr 1e-4 with held-out metrics every 23 steps, reranking the committed samples:
    the config, the held-out curve, the selection (three aggregates) from the predictions, and
    every figure the doc and the README quote."""
    from cotjax import rerank

    root = ROOT / "results/prm/gsm8k_mc_base6"
    config = json.loads((root / "prm_config.json").read_text())
    assert (config["model"], config["train"]["objective"], config["train"]["reward_labels"],
            config["data"]["labels"], config["data"]["num_epochs"], config["train"]["lr"]) == (
        "smollm2-135m-instruct", "prm", "hard", "runs/prm_gsm8k/labels", 6, 1e-4)
    trained = json.loads((root / "prm_train.json").read_text())
    assert (trained["step"], trained["data/read"]) == (133, 512)
    val = _jsonl(root / "prm_val.jsonl")
    assert [v["step"] for v in val] == [23, 46, 69, 92, 115, 133]
    assert val[-1]["val/auroc"] == trained["val/auroc"]
    doc = _doc("process_supervision.md")
    for row in ("| step (about an epoch each) | " + " | ".join(str(v["step"]) for v in val) + " |",
                "| held-out label AUROC (52 chains) | "
                + " | ".join(f"{v['val/auroc']:.2f}" for v in val) + " |",
                "| held-out loss | " + " | ".join(f"{v['val/loss']:.3f}" for v in val) + " |"):
        assert row in doc, row
    seconds = dict(line.split() for line in (root / "stage_seconds.txt").read_text().splitlines()
                   if not line.startswith("#"))
    saved, preds = _gsm8k_prm_rerank(root)
    assert round(saved["score_seconds"]["prm"]) == int(seconds["rerank_scoring"])
    assert (f"training {int(seconds['prm']):,} s (133 steps; test runs shared the cores for a few "
            f"minutes), then the same rerank ({int(seconds['rerank_scoring']):,} s of scoring)") in doc
    for how in ("min", "step_min", "prod"):
        d = rerank.reselect(str(root), how)
        w = d["paired_vs_majority"]["prm_weighted"]
        p = "p < 0.001" if w["mcnemar_p"] < 0.001 else f"p = {w['mcnemar_p']:.2f}"
        row = (f"`{how}` | {d['prm_best']['accuracy']:.3f} | {d['prm_weighted']['accuracy']:.3f} | "
               f"+{w['only_a']} / -{w['only_b']}, {p} | "
               f"{d['within_problem_auroc'][f'prm_{how}']['mean']:.2f} |")
        assert row in doc, row
    samples = [s for p in preds for s in p["samples"]]
    right = [s["prm"][-1] for s in samples if s["correct"]]
    wrong = [s["prm"][-1] for s in samples if not s["correct"]]
    assert (f"(AUROC {saved['sample_auroc']['prm_last']:.2f}; mean {statistics.mean(right):.3f} "
            f"on right samples, {statistics.mean(wrong):.3f} on wrong)") in doc
    assert (f"learnt to held-out AUROC {trained['val/auroc']:.2f} in 6 epochs, yet "
            f"{saved['within_problem_auroc']['prm_min']['mean']:.2f} within a problem") in _readme()


def test_synthetic_prm_experiment_reran_identically_on_the_xeon():
    """results/prm/synthetic_xeon: the same command on another CPU gave the same labels, the
    same samples and scores (predictions byte for byte) and selection; the doc quotes its
    stage times."""
    a, b = ROOT / "results/prm/synthetic", ROOT / "results/prm/synthetic_xeon"
    assert (a / "predictions.jsonl").read_bytes() == (b / "predictions.jsonl").read_bytes()
    for name in ("agreement-00000.json", "selection.json"):
        sa, sb = (json.loads((d / name).read_text()) for d in (a, b))
        sa.pop("score_seconds", None), sb.pop("score_seconds", None)
        assert sa == sb, name
    seconds = dict(line.split() for line in open(b / "stage_seconds.txt"))
    doc = _doc("process_supervision.md")
    assert (f"policy {seconds['policy']} s, step labels {int(seconds['labels']):,} s, PRM "
            f"{seconds['prm']} s, ORM {seconds['orm']} s, evaluation samples "
            f"{seconds['eval_samples']} s, reranking {seconds['rerank']} s") in doc


def test_prm_search_row_is_the_committed_search():
    """results/prm/synthetic_xeon/search against the selectors' choices on the same problems:
    the counts and the paired test docs/process_supervision.md quotes."""
    from cotjax import report

    root = ROOT / "results/prm/synthetic_xeon/search"
    rows = _jsonl(root / "predictions.jsonl")
    summary = json.loads((root / "summary.json").read_text())
    assert summary["n"] == len(rows) == 20 and summary["correct"] == sum(r["correct"] for r in rows)
    chosen = {p["id"]: p["selected"] for p in _jsonl(ROOT / "results/prm/synthetic/predictions.jsonl")}
    search = {r["id"]: bool(r["correct"]) for r in rows}
    right = {k: sum(chosen[i][k]["correct"] for i in search)
             for k in ("majority", "prm_best", "prm_weighted", "pass_at_n")}
    doc = _doc("process_supervision.md")
    assert (f"| right | {summary['correct']} | {right['majority']} | {right['prm_best']} | "
            f"{right['prm_weighted']} | {right['pass_at_n']} |") in doc
    maj = report.paired_comparison(search, {i: chosen[i]["majority"]["correct"] for i in search})
    assert (maj["both"], maj["only_a"], maj["only_b"]) == (8, 0, 0)
    samples = [json.loads(x) for x in gzip.open(
        ROOT / "results/prm/synthetic/eval_samples/samples-00000-of-00001.jsonl.gz", "rt")]
    drawn = sum(x["new_tokens"] for x in samples if x["problem"] < 20)
    assert (f"drawing {summary['drawn_tokens']:,} tokens where the 16 samples of these problems "
            f"drew {drawn:,}, in {summary['search_seconds']:.0f} s") in doc


def test_distinct_beam_search_figures():
    """results/prm/synthetic_xeon/search_distinct: the search with distinct beams and cached
    PRM reads got the same problems right as the first search; the doc quotes its counts and
    the benchmark's line (whose ratio is its own seconds' quotient)."""
    import collections

    root = ROOT / "results/prm/synthetic_xeon/search_distinct"
    rows = _jsonl(root / "predictions.jsonl")
    summary = json.loads((root / "summary.json").read_text())
    assert summary["beam_distinct"] and summary["n"] == len(rows) == 20
    for r in rows:
        texts = [b["text"] for b in r["beam"]]
        assert len(set(texts)) == len(texts)  # distinct: no chain twice
    first = {r["id"]: r["correct"] for r in _jsonl(ROOT / "results/prm/synthetic_xeon/search/predictions.jsonl")}
    assert {r["id"]: r["correct"] for r in rows} == first
    sizes = collections.Counter(len(r["beam"]) for r in rows)
    bench = _jsonl(root / "search_scoring.jsonl")[-1]
    assert bench["ratio"] == round(bench["full_seconds"] / bench["cached_seconds"], 2)
    assert bench["max_abs_diff"] < 1e-5 and bench["expand_seconds"] == summary["expand_seconds"]
    doc = _doc("process_supervision.md")
    assert (f"The search got the same {summary['correct']} problems right (the PRM-weighted vote "
            f"of its final beams {round(summary['weighted_accuracy'] * 20)}); {sizes[4]} of the 20 "
            f"final beams hold 4 different chains, {sizes[1]} hold one") in doc
    before = json.loads((root.parent / "search/summary.json").read_text())["drawn_tokens"]
    assert (f"it drew {summary['drawn_tokens']:,} tokens instead of {before:,}") in doc
    assert (f"{bench['candidates']} candidates, {bench['full_seconds']:.1f} s read whole, "
            f"{bench['cached_seconds']:.1f} s from their parents ({bench['ratio']:.2f}x; the two "
            f"scores of a candidate differ by at most {bench['max_abs_diff']:.1e}".replace("e-0", "e-")
            + f"), beside {bench['expand_seconds']:.1f} s of expansion") in doc


def test_three_times_the_labels_extend_the_first_ones():
    """results/prm/synthetic_x3: 240 problems' chains labelled by the same command; the first
    80 problems' 320 chains are the committed labels (only the file names in `id` and `source`
    differ: keys depend on the chain's index, not on how many follow), the agreement file adds
    the lines up, and the doc quotes the labels row and the PRM's held-out label AUROC."""
    from cotjax import prm

    root = ROOT / "results/prm/synthetic_x3"
    lines = [json.loads(x) for x in gzip.open(root / "labels/labels-00000-of-00001.jsonl.gz", "rt")]
    agree = json.loads((root / "agreement-00000.json").read_text())
    assert prm.agreement(lines) == agree and agree["chains"] == len(lines) == 960
    first = {(x["problem"], x["sample"]): x
             for x in _jsonl(ROOT / "results/prm/synthetic/labels/labels-00000-of-00001.jsonl")}
    mine = [x for x in lines if x["problem"] < 80]
    assert len(mine) == len(first) == 320
    for x in mine:
        assert {**x, "id": 0, "source": 0} == {**first[x["problem"], x["sample"]], "id": 0,
                                                 "source": 0}
    k = agree["by_kind"]
    doc = _doc("process_supervision.md")
    row = (f"| {agree['chains']} | {agree['steps']} | {agree['mc_hard_positive']:.3f} | "
           f"{agree['checker_positive']:.3f} | {agree['agreement']:.3f} | "
           f"{k['valid_claims']['mc_hard_positive']:.3f} (of {k['valid_claims']['steps']}) / "
           f"{k['invalid_claim']['mc_hard_positive']:.3f} (of {k['invalid_claim']['steps']}) |")
    assert row in doc, row
    trained = json.loads((root / "prm_train.json").read_text())
    assert trained["data/examples"] == 864
    assert f"held-out label AUROC {trained['val/auroc']:.2f}" in doc


def test_synthetic_step_labels_add_up():
    from cotjax import prm

    root = ROOT / "results/prm/synthetic"
    lines = _jsonl(root / "labels/labels-00000-of-00001.jsonl")
    agree = json.loads((root / "agreement-00000.json").read_text())
    assert prm.agreement(lines) == agree and agree["chains"] == len(lines) == 320
    k = agree["by_kind"]
    row = (f"| {agree['chains']} | {agree['steps']} | {agree['mc_hard_positive']:.3f} | "
           f"{agree['checker_positive']:.3f} | {agree['agreement']:.3f} | "
           f"{k['valid_claims']['mc_hard_positive']:.3f} (of {k['valid_claims']['steps']}) / "
           f"{k['invalid_claim']['mc_hard_positive']:.3f} (of {k['invalid_claim']['steps']}) |")
    assert row in _doc("process_supervision.md"), row


def _last(path):
    return _jsonl(path)[-1]


def test_zen5_rows_are_the_committed_runs():
    """The Zen 5 EPYC rows of docs/train.md and README's speed table (XLA's own defaults)."""
    d = ROOT / "results/cpu/epyc_zen5"
    tr = _last(d / "train_throughput_batch4.jsonl")
    dec_lines = _jsonl(d / "decode_throughput.jsonl")
    dec, agree = dec_lines[-1], dec_lines[-2]
    for r in (tr, dec):
        assert r["machine"]["cpu"]["family"] == "26" and "avx512f" in r["machine"]["cpu"]["isa"]
        assert r["machine"]["xla_flags"] == ""
    assert (tr["seq_len"], tr["batch"], tr["steps"], tr["rounds"]) == (512, 4, 2, 3)
    assert (f"| {tr['peak_jax_gflops']} / {tr['peak_torch_gflops']} | "
            f"{tr['cotjax_tokens_per_s']} / {tr['torch_tokens_per_s']} tok/s, ratio "
            f"{tr['ratio']:.2f}, MFU {tr['mfu']:.2f} (causal {tr['mfu_causal']:.2f}) | "
            f"{dec['cotjax_tokens_per_s']:.1f} / {dec['hf_tokens_per_s']:.1f} tok/s, ratio "
            f"{dec['ratio']:.2f} ({agree['identical_rows']} of {agree['rows']} rows identical)"
            ) in _doc("train.md")
    readme = _readme()
    assert f"| {tr['ratio']:.2f}x, MFU {tr['mfu']:.2f} | {dec['ratio']:.2f}x |" in readme


def test_model_load_figures_are_the_committed_run():
    """docs/train.md's GGUF loading times (cold, cached, transformers) are the Zen 5 run's rows."""
    rows = _jsonl(ROOT / "results/cpu/epyc_zen5/model_load.jsonl")
    small, gemma, last = rows
    assert last["machine"]["cpu"]["family"] == "26" and last["machine"]["xla_flags"] == ""
    assert (small["preset"], gemma["preset"]) == ("smollm2-135m-instruct", "gemma3-270m")
    doc = re.sub(r"\s+", " ", _doc("train.md"))
    assert (f"weights and tokenizer in {small['cotjax_cold_s']:.1f} s cold, "
            f"{small['cotjax_cached_s']:.1f} s cached for SmolLM2 (transformers' GGUF loading: "
            f"{small['hf_s']:.1f} s) and {gemma['cotjax_cold_s']:.1f} s / "
            f"{gemma['cotjax_cached_s']:.1f} s for Gemma 3 270M (transformers: "
            f"{gemma['hf_s']:.1f} s)") in doc


def test_cpu_kind_rows_are_the_committed_runs():
    """The EPYC row of docs/train.md and README's speed table are the committed runs' last lines,
    with the XLA flags each ran under."""
    d = ROOT / "results/cpu/epyc_zen3"
    now = _last(d / "train_throughput_batch4_cotjax_defaults.jsonl")
    before = _last(d / "train_throughput_batch4.jsonl")
    dec_lines = _jsonl(d / "decode_throughput.jsonl")
    dec, agree = dec_lines[-1], dec_lines[-2]
    for r in (now, before, dec):
        assert "avx2" in r["machine"]["cpu"]["isa"] and "avx512f" not in r["machine"]["cpu"]["isa"]
    assert now["machine"]["xla_flags"] == "--xla_cpu_prefer_vector_width=512"
    assert before["machine"]["xla_flags"] == dec["machine"]["xla_flags"] == ""
    doc = _doc("train.md")
    assert (f"| {now['peak_jax_gflops']} / {now['peak_torch_gflops']} | "
            f"{now['cotjax_tokens_per_s']} / {now['torch_tokens_per_s']} tok/s, ratio "
            f"{now['ratio']:.2f}, MFU {now['mfu']:.2f} (causal {now['mfu_causal']:.2f}) | "
            f"{dec['cotjax_tokens_per_s']:.1f} / {dec['hf_tokens_per_s']:.1f} tok/s, ratio "
            f"{dec['ratio']:.2f} ({agree['identical_rows']} of {agree['rows']} rows identical)") in doc
    assert (f"{before['cotjax_tokens_per_s']} / {before['torch_tokens_per_s']} tok/s, ratio "
            f"{before['ratio']:.2f}, MFU {before['mfu']:.2f}") in doc
    ab = {}
    for r in _jsonl(d / "train_vector_width_ab.jsonl"):
        ab.setdefault(r["machine"]["xla_flags"], []).append(r["cotjax_tokens_per_s"])
    wide, plain = sorted(ab.pop("--xla_cpu_prefer_vector_width=512")), sorted(ab.pop(""))
    assert not ab and len(wide) == len(plain) == 2
    assert f"{wide[0]} and {wide[1]} tok/s with it, {plain[0]} and {plain[1]} without" in doc
    readme = _readme()
    lo, hi = sorted([now, before], key=lambda r: r["ratio"])
    assert (f"| {lo['ratio']:.2f}-{hi['ratio']:.2f}x, MFU {now['mfu']:.2f}-{before['mfu']:.2f} | "
            f"{dec['ratio']:.2f}x |") in readme


def test_cpu_matmul_sweep_table_is_the_committed_run():
    lines = _jsonl(ROOT / "results/cpu/epyc_zen3/cpu_matmul.jsonl")
    last = lines[-1]
    passes = {}
    for r in lines:
        if "pass" in r and "step_matmul_s" in r:
            passes.setdefault(r.get("setting", "torch"), []).append(r["step_matmul_s"])
    best = {k: v["step_matmul_s"] for k, v in last["settings"].items()}
    best["torch"] = last["torch_step_matmul_s"]
    doc = _doc("train.md")
    for name, seconds in best.items():
        per_pass = ", ".join(f"{p:.1f}" for p in passes[name])
        assert f"| {seconds:.1f} | {per_pass} |" in doc, name
    assert last["machine"]["cpu"]["model"] == "AMD EPYC" and last["passes"] == 3


ERROR_ROWS = (("cut by the 256-token limit", "cut"), ("no claim to check", "no_claims"),
              ("the answer is not the last claim's value", "answer_not_from_chain"),
              ("a false claim (a computing error)", "arithmetic"),
              ("every claim true, the answer the chain's result: a wrong setup (a reasoning error)",
               "setup"))


def _greedy_calculator_figures(root, c, text):
    """A calculator experiment's greedy half: comparison.json `c` is what root's predictions
    give (paired test, error split, step shares), and `text` quotes the step shares, decoding
    speeds, error rows and calculator calls. Returns the paired test and both runs' rows."""
    from cotjax import report

    rows = {k: _jsonl(root / k / "predictions.jsonl") for k in ("without", "with")}
    g = report.paired_from_files(root / "without/predictions.jsonl", root / "with/predictions.jsonl")
    assert (g["n"], g["correct_a"], g["correct_b"], g["only_a"], g["only_b"]) == \
        (c["n"], round(c["accuracy_without"] * 500), round(c["accuracy_with"] * 500),
         c["only_without"], c["only_with"]) and g["mcnemar_p"] == c["mcnemar_p"]
    for k in ("without", "with"):
        assert report.error_split(rows[k]) == c[f"errors_{k}"]
        total = sum(r["steps_total"] for r in rows[k])
        valid = sum(r["steps_valid"] for r in rows[k])
        assert valid / total == c[f"steps_valid_{k}"]
        assert f"{valid} of {total} ({100 * valid / total:.1f}%)" in text
        s = json.loads((root / k / "summary.json").read_text())
        assert f"{s['decode_seconds']:.1f} s, {s['greedy_tokens_per_s']:.1f} tokens/s" in text
    for label, key in ERROR_ROWS:
        row = f"| {label} | {c['errors_without'][key]} | {c['errors_with'][key]} |"
        assert row in text, row
    assert f"{c['calculator_calls']} ({c['calculator_changed']})" in text
    return g, rows


@pytest.mark.parametrize("name", ["cot_1k", "smollm2_cot"])
def test_calculator_experiment_figures(name):
    """results/calculator/<name>: comparison.json is what its predictions give (paired tests,
    the error split, the step shares) and docs/calculator.md quotes it."""
    from cotjax import report

    root = CALC / name
    c = json.loads((root / "comparison.json").read_text())
    doc = _doc("calculator.md")
    _greedy_calculator_figures(root, c, doc)
    m = report.paired_from_files(root / "maj8_without/predictions.jsonl",
                                 root / "maj8_with/predictions.jsonl", "maj_correct")
    assert (m["n"], m["correct_a"] / m["n"], m["correct_b"] / m["n"], m["mcnemar_p"]) == \
        (c["maj8"]["n"], c["maj8"]["accuracy_without"], c["maj8"]["accuracy_with"],
         c["maj8"]["mcnemar_p"])
    assert f"McNemar p = {c['mcnemar_p']:.3f}" in doc
    m = c["maj8"]
    assert (f"| accuracy, maj@8 (first {m['n']}) | {m['accuracy_without']:.2f} | "
            f"{m['accuracy_with']:.2f}; p = {m['mcnemar_p']:.3f} |") in doc
    seconds = [json.loads((root / k / "summary.json").read_text())["sample_decode_seconds"]
               for k in ("maj8_without", "maj8_with")]
    assert f"| maj@8 sampling, {m['n']} problems x 8 | {seconds[0]:.1f} s | {seconds[1]:.1f} s |" in doc


def test_the_chosen_smollm2_model_without_the_calculator_is_its_committed_greedy_run():
    """The run without the calculator (Zen 5) wrote, problem by problem, the same chains as the
    committed sweep predictions of the same checkpoint (written on another CPU)."""
    mine = _jsonl(CALC / "smollm2_cot/without/predictions.jsonl")
    committed = _jsonl(ROOT / "results/gsm8k/sweep/cot_lr2e-4_ep2_predictions.jsonl")
    assert [(r["id"], r["generation"], r["correct"]) for r in mine] == \
        [(r["id"], r["generation"], r["correct"]) for r in committed]


def test_chosen_smollm2_model_error_transitions():
    """What became of the chosen model's computing errors with the calculator, per problem, and
    the remaining split, as docs/calculator.md and the README quote them."""
    from collections import Counter

    from cotjax import report

    root = CALC / "smollm2_cot"
    rows = {k: _jsonl(root / k / "predictions.jsonl") for k in ("without", "with")}
    moved = Counter(report.error_kind(b) for a, b in zip(rows["without"], rows["with"])
                    if report.error_kind(a) == "arithmetic")
    doc = _doc("calculator.md")
    assert (f"Of the {sum(moved.values())} wrong answers with a computing error, the calculator "
            f"turns {moved[None]} into right answers, {moved['setup']} into chains true step by "
            f"step and set up wrongly, {moved['answer_not_from_chain']} into chains whose answer "
            f"then ignores the last value, and {moved['cut']} into loops") in doc
    # answers that ignore the chain's last value: a non-integer value written as an integer
    ignored = [r for r in rows["with"] if report.error_kind(r) == "answer_not_from_chain"]
    fractional = [r for r in ignored if float(r["last_step_value"]) % 1]
    dropped = [r for r in fractional
               if str(r["extracted"]) == r["last_step_value"].replace(".", "").lstrip("0")]
    nearby = [r for r in fractional if r not in dropped
              and abs(float(r["extracted"]) - float(r["last_step_value"])) < 1]
    assert (f"{len(ignored)} answers do not follow their own chain: in {len(fractional)} of those "
            f"the last value is not an integer and the model writes an integer anyway, a nearby "
            f"one in {len(nearby)} and the digits without the point in {len(dropped)}") in doc
    c = json.loads((root / "comparison.json").read_text())
    readme = _readme()
    assert (f"{c['errors_with']['setup']} of its {c['errors_with']['wrong']} remaining errors a "
            "wrong setup") in readme


def test_calculator_comparison_is_the_chosen_models():
    """results/calculator/comparison.json, the file issue 26 names, holds the chosen SmolLM2 CoT
    model's figures from its own experiment directory."""
    top = json.loads((CALC / "comparison.json").read_text())
    c = json.loads((CALC / "smollm2_cot/comparison.json").read_text())
    assert top["source"] == "results/calculator/smollm2_cot/comparison.json"
    for key in ("n", "accuracy_without", "accuracy_with", "mcnemar_p"):
        assert top[key] == c[key], key


def _assert_round_comparison(root, teacher, kept, records):
    """A round's comparison.json is the paired test of the teacher's and the student's committed
    predictions, with the kept chains and records trained it names; returns (comparison, test)."""
    from cotjax import report

    c = json.loads((root / "comparison.json").read_text())
    p = report.paired_from_files(teacher, root / "round1_predictions.jsonl")
    assert (p["n"], p["correct_a"] / p["n"], p["correct_b"] / p["n"], p["mcnemar_p"]) == \
        (c["n"], c["teacher_accuracy"], c["student_accuracy"], c["mcnemar_p"])
    assert (c["kept_chains"], c["records_trained"]) == (kept, records)
    return c, p


@pytest.mark.parametrize("name", ["cpu_cot_1k", "cpu_cot_1k_calc"])
def test_cpu_rft_round_figures(name):
    """results/distill/<name>: the funnel is what `cotjax distill` makes of the committed samples
    with the teacher's 1,000 human chains; comparison.json is the paired test of the committed
    teacher and student predictions; docs/sample_distill.md quotes both."""
    from cotjax import defaults, distill, report

    root = ROOT / "results/distill" / name
    config = defaults.load_config("configs/gsm8k.py")
    config.data.max_examples = 1000
    rows = report.read_sample_dirs([str(root / "samples")])
    assert len(rows) == 1200
    records, funnel = distill.select(rows, human=distill.load_human("train", config))
    committed = json.loads((root / "round1_funnel.json").read_text())
    assert funnel["funnel"] == committed["funnel"]
    assert funnel["problems_with_kept_chain"] == committed["problems_with_kept_chain"]
    sampled = [r for r in records if r["source"] == "sampled"]
    assert [(r["problem"], r["sample"]) for r in sampled] == \
        [(r["problem"], r["sample"]) for r in _jsonl(root / "round1_kept_sampled.jsonl")]
    c, p = _assert_round_comparison(root, ROOT / "results/calculator/cot_1k/without/predictions.jsonl",
                                    funnel["funnel"]["kept"], 1000 + len(sampled))
    f = funnel["funnel"]
    doc = _doc("sample_distill.md")
    assert (f"| {f['sampled']} | {f['correct']} | {f['steps_valid']} | {f['consistent']} | "
            f"{f['finished']} | {f['distinct']} | {f['kept']} | {funnel['problems_with_kept_chain']} |") in doc
    assert (f"| {c['teacher_accuracy']:.3f} ({p['correct_a']}) | {c['student_accuracy']:.3f} "
            f"({p['correct_b']}) | {p['only_a']} / {p['only_b']} | {c['mcnemar_p']:.2f} |") in doc


def _gunzipped_samples(src, dst):
    """A committed sample directory (manifest and gzipped shards) as `cotjax distill` reads it."""
    import gzip
    import shutil

    from cotjax import report

    dst.mkdir(parents=True)
    shutil.copy(src / "manifest.json", dst)
    for shard in src.glob("*.jsonl.gz"):
        with gzip.open(shard, "rb") as f, open(dst / shard.name.removesuffix(".gz"), "wb") as g:
            shutil.copyfileobj(f, g)
    return report.read_sample_dirs([str(dst)])


def test_cpu_star_round_figures(tmp_path):
    """results/distill/cpu_cot_1k_star, issue 22's experiment 3 at CPU scale: the retrained
    stand-in teacher drew the committed CPU round's samples (up to near-ties), the hinted pass
    sampled exactly the problems left without a kept chain, both funnels are what `cotjax
    distill` makes of the committed samples, hinted chains are stored without the hint, and
    comparison.json and docs/sample_distill.md are the paired tests of the committed predictions."""
    from cotjax import defaults, distill, report

    root = ROOT / "results/distill/cpu_cot_1k_star"
    rows = _gunzipped_samples(root / "samples", tmp_path / "samples")
    hinted = _gunzipped_samples(root / "samples_hint", tmp_path / "samples_hint")
    before = {(r["problem"], r["sample"]): r for r in _jsonl(
        ROOT / "results/distill/cpu_cot_1k/samples/samples-00000-of-00001.jsonl")}
    same = sum(before[(r["problem"], r["sample"])]["generation"] == r["generation"] for r in rows)
    assert len(rows) == 1200 and all(before[(r["problem"], r["sample"])]["correct"] == r["correct"]
                                     for r in rows)
    assert not any(r["correct"] for r in rows
                   if before[(r["problem"], r["sample"])]["generation"] != r["generation"])
    config = defaults.load_config("configs/gsm8k.py")
    config.data.max_examples = 1000
    human = distill.load_human("train", config)
    _, plain = distill.select(rows, human=human)
    assert plain["funnel"] == json.loads((root / "round1_funnel_without_hint.json").read_text())["funnel"]
    solved = {i for i, q in plain["per_problem"].items() if q["kept"]}
    records, funnel = distill.select(rows + hinted, human=human)
    assert funnel["funnel"] == json.loads((root / "round1_funnel.json").read_text())["funnel"]
    assert all(r["hint"] for r in hinted) and len(hinted) == 4 * (300 - plain["problems_with_kept_chain"])
    assert {r["id"] for r in hinted} == set(plain["per_problem"]) - solved
    sampled = [r for r in records if r["source"] == "sampled"]
    assert [(r["problem"], r["sample"], r["hint"]) for r in sampled] == \
        [(r["problem"], r["sample"], r["hint"]) for r in _jsonl(root / "round1_kept_sampled.jsonl")]
    assert all("Hint" not in r["question"] for r in sampled)
    _, only_hinted = distill.select(hinted)
    # the round without the hint is the committed CPU round: same funnel, same kept chains
    first = ROOT / "results/distill/cpu_cot_1k"
    assert plain["per_problem"] == json.loads((first / "round1_funnel.json").read_text())["per_problem"]
    assert [(r["problem"], r["sample"]) for r in sampled if not r["hint"]] == \
        [(r["problem"], r["sample"]) for r in _jsonl(first / "round1_kept_sampled.jsonl")]
    # the teacher retrained on this Xeon: the committed run's losses, step for step
    runs = [_jsonl(ROOT / f"results/teachers/{t}/metrics.jsonl") for t in ("cot_1k", "cot_1k_xeon")]
    assert [m["step"] for m in runs[0]] == [m["step"] for m in runs[1]]
    gap = max(abs(a[k] - b[k]) for a, b in zip(*runs) for k in ("loss", "val/loss") if k in a)
    assert gap < 6e-7
    c, p = _assert_round_comparison(root, ROOT / "results/calculator/cot_1k/without/predictions.jsonl",
                                    funnel["funnel"]["kept"], len(records))
    q = report.paired_from_files(ROOT / "results/distill/cpu_cot_1k/round1_predictions.jsonl",
                                 root / "round1_predictions.jsonl")
    doc = _doc("sample_distill.md")
    assert f"{same} of the 1,200 samples are the committed round's text for text" in doc
    for name, f in (("without the hint", plain), ("the hinted pass alone", only_hinted),
                    ("with the hinted pass", funnel)):
        g = f["funnel"]
        assert (f"| {name} | {g['sampled']} | {g['correct']} | {g['steps_valid']} | "
                f"{g['consistent']} | {g['finished']} | {g['distinct']} | {g['kept']} | "
                f"{f['problems_with_kept_chain']} |") in doc
    s = json.loads((root / "round1_summary.json").read_text())
    assert (f"| {c['teacher_accuracy']:.3f} ({p['correct_a']}) | {c['student_accuracy']:.3f} "
            f"({p['correct_b']}) | {p['only_a']} / {p['only_b']} | {c['mcnemar_p']:.2f} | "
            f"{q['correct_a'] / 500:.3f} ({q['correct_a']}) | {q['only_a']} / {q['only_b']} | "
            f"{q['mcnemar_p']:.2f} | {s['chains_all_steps_valid']:.1%} |") in doc
    assert (f"One STaR round with rationalisation keeps {only_hinted['funnel']['kept']} hinted "
            f"chains, only 2 of them sound by reading, and moves nothing "
            f"({c['student_accuracy']:.3f} against {c['teacher_accuracy']:.3f}, p = "
            f"{c['mcnemar_p']:.2f})") in _readme()


def _h200_round_samples(tmp_path):
    """The H200 round's committed (gzipped) samples, read as `cotjax distill` reads them."""
    return _gunzipped_samples(ROOT / "results/distill/gpu_round1/samples", tmp_path / "samples")


def test_h200_rft_round_figures(tmp_path):
    """results/distill/gpu_round1, issue 22's experiment on the H200: the funnel is what `cotjax
    distill` makes of the committed (gzipped) samples with all the human chains, the committed
    training records are those, comparison.json is the paired test of the committed teacher and
    student predictions, and docs/sample_distill.md and the README quote them."""
    import gzip

    from cotjax import defaults, distill, report

    root = ROOT / "results/distill/gpu_round1"
    rows = _h200_round_samples(tmp_path)
    assert len(rows) == 6973 * 4
    human = distill.load_human("train", defaults.load_config("configs/gsm8k.py"))
    records, funnel = distill.select(rows, human=human)
    committed = json.loads((root / "round1_funnel.json").read_text())
    assert funnel["funnel"] == committed["funnel"]
    assert funnel["problems_with_kept_chain"] == committed["problems_with_kept_chain"]
    with gzip.open(root / "round1_kept.jsonl.gz", "rt") as f:
        trained = [json.loads(line) for line in f]
    assert [(r["source"], r["question"], r["chain"]) for r in records] == \
        [(r["source"], r["question"], r["chain"]) for r in trained]
    teacher = ROOT / "results/gsm8k/sweep_gpu/cot_lr2e-4_ep2_predictions.jsonl"
    c, p = _assert_round_comparison(root, teacher, funnel["funnel"]["kept"], len(records))
    f = funnel["funnel"]
    doc = _doc("sample_distill.md")
    assert (f"| {f['sampled']} | {f['correct']} | {f['steps_valid']} | {f['consistent']} | "
            f"{f['finished']} | {f['distinct']} | {f['kept']} | {funnel['problems_with_kept_chain']} |") in doc
    student = json.loads((root / "round1_summary.json").read_text())
    assert (f"| {c['teacher_accuracy']:.3f} ({p['correct_a']}) | {c['student_accuracy']:.3f} "
            f"({p['correct_b']}) | {p['only_a']} / {p['only_b']} | {c['mcnemar_p']:.2f} | "
            f"{student['maj_accuracy']:.3f} ({round(student['maj_accuracy'] * 500)}) |") in doc
    assert (f"gives a student at {c['student_accuracy']:.3f} against its teacher's "
            f"{c['teacher_accuracy']:.3f} (p = {c['mcnemar_p']:.2f}; maj@8 "
            f"{student['maj_accuracy']:.3f}") in _readme()
    t = json.loads((ROOT / "results/gsm8k/sweep_gpu/cot_lr2e-4_ep2_summary.json").read_text())
    assert (f"| {t['chains_all_steps_valid']:.1%} → {student['chains_all_steps_valid']:.1%} | "
            f"{t['step_validity']:.1%} → {student['step_validity']:.1%} |") in doc
    cpu = report.paired_from_files(ROOT / "results/gsm8k/sweep/cot_lr2e-4_ep2_predictions.jsonl", teacher)
    assert (f"{cpu['only_a']} / {cpu['only_b']} problems right only in one, McNemar p = "
            f"{cpu['mcnemar_p']:.2f}") in doc
    _, f2 = distill.select([r for r in rows if r["sample"] < 2], human=human)  # the K table
    g = f2["funnel"]
    assert (f"| 2 | {g['correct']} | {g['distinct']} | {g['kept']} | "
            f"{f2['problems_with_kept_chain']} |") in doc
    assert f"| 4 | {f['correct']} | {f['distinct']} | {f['kept']} | {funnel['problems_with_kept_chain']} |" in doc
    solved = {r["problem"] for r in rows if r["correct"]}
    assert f"{len(solved):,} problems have at least one right sample" in doc
    assert f"{f['distinct'] - f['kept']} of the {f['distinct']:,} distinct right paths" in doc


def test_cpu_cross_family_gemma_student_figures(tmp_path):
    """results/distill/cpu_xfam_gemma, issue 22's experiment 2 at CPU scale: the kept chains are
    what `cotjax distill --max_problems=1000` makes of the H200 round's committed samples, the
    student trained on them with the first 1,000 human chains, and comparison.json is the paired
    test of the committed predictions that docs/sample_distill.md quotes."""
    from cotjax import defaults, distill, report

    root = ROOT / "results/distill/cpu_xfam_gemma"
    rows = [r for r in _h200_round_samples(tmp_path) if r["problem"] < 1000]
    config = defaults.load_config("configs/gsm8k.py")
    config.data.max_examples = 1000
    records, funnel = distill.select(rows, human=distill.load_human("train", config))
    committed = json.loads((root / "kept_funnel.json").read_text())
    assert funnel["funnel"] == committed["funnel"] and funnel["problems"] == 1000
    sampled = [r for r in records if r["source"] == "sampled"]
    assert [(r["problem"], r["sample"], r["chain"]) for r in sampled] == \
        [(r["problem"], r["sample"], r["chain"]) for r in _jsonl(root / "kept_sampled.jsonl")]
    assert all(r["model"] == "runs/sweep/cot_lr2e-4_ep2 step 688" for r in sampled)
    student = json.loads((root / "student_config.json").read_text())
    assert (student["model"], student["data"]["template"], student["train"]["lr"],
            student["data"]["num_epochs"]) == ("gemma3-270m", "plain", 2e-4, 1)
    last = _jsonl(root / "student_metrics.jsonl")[-2]
    assert last["step"] == 48
    assert '"data/examples": 1211' in (root / "student_train.log").read_text()
    base_steps = _jsonl(ROOT / "results/teachers/gemma_cot_1k/metrics.jsonl")[-1]["step"]
    assert (last["step"], base_steps) == (48, 41)
    c = json.loads((root / "comparison.json").read_text())
    assert (c["kept_chains"], c["records_trained"]) == (len(sampled), len(records)) == (211, 1211)
    t = report.paired_from_files(ROOT / c["teacher_predictions"], root / "student_predictions.jsonl")
    b = report.paired_from_files(ROOT / c["baseline_predictions"], root / "student_predictions.jsonl")
    assert (t["n"], t["correct_a"] / 500, t["correct_b"] / 500, t["mcnemar_p"], t["only_a"],
            t["only_b"]) == (c["n"], c["teacher_accuracy"], c["student_accuracy"],
                             c["mcnemar_p"], c["only_teacher"], c["only_student"])
    assert (b["correct_a"] / 500, b["mcnemar_p"], b["only_a"], b["only_b"]) == \
        (c["baseline_accuracy"], c["baseline_mcnemar_p"], c["only_baseline"],
         c["only_student_vs_baseline"])
    f, doc = funnel["funnel"], _doc("sample_distill.md")
    assert (f"| {f['sampled']} | {f['correct']} | {f['steps_valid']} | {f['consistent']} | "
            f"{f['finished']} | {f['distinct']} | {f['kept']} | {funnel['problems_with_kept_chain']} |") in doc
    # without the cap of 4 the same chains are kept, so every distinct path not kept is the
    # problem's human chain
    _, uncapped = distill.select(rows, human=distill.load_human("train", config), max_per_problem=100)
    assert uncapped["funnel"] == f
    assert (f"{f['distinct'] - f['kept']} of the {f['distinct']} distinct right paths are the "
            "problem's own human chain") in doc
    assert (f"{b['only_b']} problems right only for the student against {b['only_a']} only for "
            f"the baseline, McNemar p = {b['mcnemar_p']:.3f}") in doc
    assert (f"{t['only_a']} / {t['only_b']}, p = {t['mcnemar_p']:.0e}") in doc


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_cpu_cross_family_controls():
    """results/distill/cpu_xfam_gemma's same-machine controls: the human-chain baseline retrained
    on this Xeon, the count-matched control (`distill --control`: each kept chain replaced by its
    problem's human chain) and the student in a second data order, each the student's recipe but
    for its data; comparison.json's paired tests, the doc's table and lines and the README's
    sentence recompute from the committed files."""
    from cotjax import defaults, distill, report

    root = ROOT / "results/distill/cpu_xfam_gemma"
    config = defaults.load_config("configs/gsm8k.py")
    config.data.max_examples = 1000
    human, _ = distill.select([], human=distill.load_human("train", config))
    control = distill.matched_control(human + _jsonl(root / "kept_sampled.jsonl"))
    c = json.loads((root / "comparison.json").read_text())
    # the control run's training file is what --control writes of the committed kept chains
    assert hashlib.sha256("".join(json.dumps(r) + "\n" for r in control).encode()).hexdigest() \
        == c["control_records_sha256"]
    assert (len(control), sum(r["source"] == "human_copy" for r in control)) == (1211, 211)
    student = _flat(json.loads((root / "student_config.json").read_text()))
    want = {"baseline_xeon": {"data.max_examples": (-1, 1000), "data.train_path": (
                "runs/xfam/kept.jsonl", ""), "train.progress": (False, True)},
            "control": {"data.train_path": ("runs/xfam/kept.jsonl", "runs/xfam/kept.jsonl.control.jsonl"),
                        "train.progress": (False, True)},
            "student_seed1": {"seed": (0, 1), "train.progress": (False, True)},
            "control_seed1": {"data.train_path": ("runs/xfam/kept.jsonl",
                                                  "runs/xfam/kept.jsonl.control.jsonl"),
                              "seed": (0, 1), "train.progress": (False, True)},
            "baseline_xeon_seed1": {"data.max_examples": (-1, 1000), "data.train_path": (
                "runs/xfam/kept.jsonl", ""), "seed": (0, 1), "train.progress": (False, True)}}
    steps = {}
    for arm, diff in want.items():
        cfg = _flat(json.loads((root / f"{arm}_config.json").read_text()))
        assert {k: (student.get(k), cfg.get(k)) for k in student.keys() | cfg.keys()
                if student.get(k) != cfg.get(k)} == diff
        steps[arm] = max(m["step"] for m in _jsonl(root / f"{arm}_metrics.jsonl"))
    assert steps == {"baseline_xeon": 41, "control": 48, "student_seed1": 48, "control_seed1": 48,
                     "baseline_xeon_seed1": 41}
    # the retrain reproduces the committed Zen 5 baseline's losses
    zen5 = {m["step"]: m["loss"] for m in _jsonl(ROOT / "results/teachers/gemma_cot_1k/metrics.jsonl")
            if "loss" in m}
    xeon = {m["step"]: m["loss"] for m in _jsonl(root / "baseline_xeon_metrics.jsonl") if "loss" in m}
    assert xeon.keys() == zen5.keys() and max(abs(xeon[s] - zen5[s]) for s in xeon) < 3.3e-4
    doc, pred = _doc("sample_distill.md"), lambda arm: root / f"{arm}_predictions.jsonl"
    for row in c["controls"]:
        for other, paired in ((k[3:], v) for k, v in row.items() if k.startswith("vs_")):
            p = report.paired_from_files(pred(row["name"]), pred(other))
            assert (row["correct"], paired["only_this"], paired[f"only_{other}"], paired["mcnemar_p"]) \
                == (p["correct_a"], p["only_a"], p["only_b"], p["mcnemar_p"])
    arms = ("baseline_xeon", "baseline_xeon_seed1", "control", "control_seed1", "student",
            "student_seed1")
    summaries = [json.loads(p.read_text()) for p in (
        ROOT / "results/gsm8k/sweep_gpu/cot_lr2e-4_ep2_summary.json",
        CALC / "gemma_cot_1k/without/summary.json", *(root / f"{a}_summary.json" for a in arms))]
    by_arm = dict(zip(("teacher", "zen5", *arms), summaries))
    assert "| accuracy, greedy | " + " | ".join(
        f"{s['accuracy']:.3f} ({s['correct']})" for s in summaries) + " |" in doc
    assert "| steps valid | " + " | ".join(f"{s['step_validity']:.1%}" for s in summaries) + " |" in doc
    assert "| chains with every step valid | " + " | ".join(
        f"{s['chains_all_steps_valid']:.1%}" for s in summaries) + " |" in doc
    assert "| cut by the 256-token limit | " + " | ".join(
        str(s["finished_length"]) for s in summaries) + " |" in doc
    arm = {row["name"]: row for row in c["controls"]}
    base, ctl, seed1 = arm["baseline_xeon"], arm["control"], arm["student_seed1"]
    assert (f"{base['vs_student']['only_student']} / {base['vs_student']['only_this']}, p = "
            f"{base['vs_student']['mcnemar_p']:.3f}") in doc
    assert (f"gets {ctl['correct']} of 500 right: {ctl['vs_student']['only_this']} problems right "
            f"only for the control against {ctl['vs_student']['only_student']} only for the "
            f"student, McNemar p = {ctl['vs_student']['mcnemar_p']:.2f}") in doc
    cb, sb = ctl["vs_baseline_xeon"], seed1["vs_baseline_xeon"]
    b0 = base["vs_student"]
    assert (f"against the baseline retrained here the control is {cb['only_this']} / "
            f"{cb['only_baseline_xeon']} (p = {cb['mcnemar_p']:.3f}) and the student's two orders "
            f"{b0['only_student']} / {b0['only_this']} (p = {b0['mcnemar_p']:.3f}) and "
            f"{sb['only_this']} / {sb['only_baseline_xeon']} (p = {sb['mcnemar_p']:.3f})") in doc
    ss, sc = seed1["vs_student"], seed1["vs_control"]
    assert (f"In another data order the student gets {seed1['correct']} ({ss['only_this']} / "
            f"{ss['only_student']} against the first order, p = {ss['mcnemar_p']:.2f}: the order "
            f"alone changes the outcome of {ss['only_this'] + ss['only_student']} problems, "
            f"{ss['only_this'] - ss['only_student']} net), and against the control "
            f"{sc['only_this']} / {sc['only_control']}, p = {sc['mcnemar_p']:.2f}") in doc
    right = {arm: {r["id"] for r in _jsonl(pred(arm)) if r["correct"]}
             for arm in ("baseline_xeon", "control", "student", "student_seed1")}
    right["zen5"] = {r["id"] for r in _jsonl(CALC / "gemma_cot_1k/without/predictions.jsonl") if r["correct"]}
    assert right["zen5"] < right["baseline_xeon"] and len(right["baseline_xeon"] - right["zen5"]) == 1
    assert (f"the control shares {len(right['control'] & right['student'])} with each student order, "
            f"the two orders share {len(right['student'] & right['student_seed1'])}") in doc
    assert len(right["control"] & right["student_seed1"]) == 1
    assert not (right["zen5"] | right["baseline_xeon"]) & (
        right["control"] | right["student"] | right["student_seed1"])
    tokens = [statistics.mean(r["new_tokens"] for r in _jsonl(p)) for p in (
        pred("control"), pred("student"), pred("student_seed1"), pred("baseline_xeon"))]
    assert (f"({tokens[0]:.0f} new tokens on average against {tokens[1]:.0f} and {tokens[2]:.0f}; "
            f"the baseline {tokens[3]:.0f})") in doc
    validity = sorted(by_arm[a]["step_validity"] for a in ("zen5", *arms))
    assert f"(steps valid {validity[0]:.1%} to {validity[-1]:.1%} in every Gemma arm" in doc
    assert (f"{validity[-1]:.1%} in every Gemma arm: the student's orders "
            f"{by_arm['student']['step_validity']:.1%} and {by_arm['student_seed1']['step_validity']:.1%}, "
            f"the control's {by_arm['control']['step_validity']:.1%} and "
            f"{by_arm['control_seed1']['step_validity']:.1%})") in doc
    assert (f"({by_arm['control']['finished_length']} against {by_arm['student']['finished_length']} and "
            f"{by_arm['student_seed1']['finished_length']}; the baseline "
            f"{by_arm['baseline_xeon']['finished_length']})") in doc
    # every arm in two orders: the replicate sign tests recompute and the doc quotes them
    two = {"student": ["student", "student_seed1"], "control": ["control", "control_seed1"],
           "baseline_xeon": ["baseline_xeon", "baseline_xeon_seed1"]}
    rep = {(r["a"], r["b"]): r for r in c["replicates"]}
    assert set(rep) == {("student", "control"), ("control", "baseline_xeon"), ("student", "baseline_xeon")}
    for (a, b), r in rep.items():
        got = report.paired_from_files([pred(x) for x in two[a]], [pred(x) for x in two[b]])
        assert (r["names_a"], r["names_b"]) == (two[a], two[b])
        assert {k: r[k] for k in ("correct_a", "correct_b", "more_a", "more_b", "sign_p")} == {
            k: got[k] for k in ("correct_a", "correct_b", "more_a", "more_b", "sign_p")}
    sc, cb, sb = rep["student", "control"], rep["control", "baseline_xeon"], rep["student", "baseline_xeon"]
    c2, b2 = arm["control_seed1"], arm["baseline_xeon_seed1"]
    assert (f"The control's second order gets {c2['correct']} of 500 (its first "
            f"{ctl['correct']}: {c2['vs_control']['only_this']} / {c2['vs_control']['only_control']} "
            f"discordant, p = {c2['vs_control']['mcnemar_p']:.2f}) and the baseline's {b2['correct']} "
            f"(its first {base['correct']})") in doc
    assert (f"the student ({sc['correct_a'][0]} and {sc['correct_a'][1]}) is ahead of the control "
            f"({sc['correct_b'][0]} and {sc['correct_b'][1]}) on {sc['more_a']} problems and behind "
            f"on {sc['more_b']}, p = {sc['sign_p']:.2f}") in doc
    assert (f"the student is ahead of the baseline ({sb['correct_b'][0]} and {sb['correct_b'][1]}) "
            f"on {sb['more_a']} problems and behind on {sb['more_b']} (p = {sb['sign_p']:.3f}), but "
            f"the control only on {cb['more_a']} against {cb['more_b']} (p = {cb['sign_p']:.3f})") in doc
    assert (f"(Bonferroni would make {sb['sign_p']:.3f} {3 * sb['sign_p']:.3f} and {cb['sign_p']:.3f} "
            f"{3 * cb['sign_p']:.2f})") in doc
    level = b2["vs_control_seed1"]
    assert (f"level ({c2['correct']} against {b2['correct']}; {level['only_control_seed1']} problems "
            f"only for the control, {level['only_this']} only for the baseline, p = "
            f"{level['mcnemar_p']:.1f})") in doc
    second = (by_arm["control_seed1"], by_arm["baseline_xeon_seed1"])
    assert max(s["step_validity"] for s in summaries[1:]) == second[0]["step_validity"]
    assert (f"({second[0]['step_validity']:.1%}; chains all valid "
            f"{second[0]['chains_all_steps_valid']:.1%})") in doc
    assert f"evaluation 647 s and 879 s (decoding {second[0]['decode_seconds']:.0f} and " \
           f"{second[1]['decode_seconds']:.0f} s)" in doc
    for name, wall in (("control_seed1", "1998"), ("baseline_xeon_seed1", "2016")):
        assert f"wall: {wall} s" in (root / f"{name}.log").read_text()
    readme = _readme()
    assert (f"with two data orders an arm, {sc['correct_a'][0]} and {sc['correct_a'][1]} against "
            f"{sc['correct_b'][0]} and {sc['correct_b'][1]}, sign test p = {sc['sign_p']:.2f}") in readme
    assert (f"gets {by_arm['student']['correct']} of 500 right ({seed1['correct']} in another data order), "
            f"and a count-matched control (each SmolLM2 chain replaced by the problem's human chain: "
            f"the same records and steps without the teacher's text) gets {ctl['correct']} (p = "
            f"{ctl['vs_student']['mcnemar_p']:.2f};") in readme


def test_host_round_figures():
    """benchmarks/host_round.py's committed run: per-round costs are its per-call costs times
    the calls a round makes, and docs/sample_distill.md quotes them."""
    calls, last = _jsonl(ROOT / "results/distill/host_round_epyc_zen3.jsonl")
    r, B = last["round_ms"], last["rows"]
    assert r["stop_every_round"] == pytest.approx(B * calls["stop_check"], abs=1e-3)
    assert r["stop_once_per_check_every"] == pytest.approx(
        r["stop_every_round"] / last["check_every"], abs=1e-3)
    assert r["hook"] == pytest.approx(B * calls["triggers_per_token"] * calls["hook"], abs=1e-3)
    assert last["machine"]["cpu"]["model"] == "AMD EPYC" and last["machine"]["cpu"]["family"] == "25"
    doc = _doc("sample_distill.md")
    before = _jsonl(ROOT / "results/distill/host_round_epyc_zen3_uncached_inserts.jsonl")[1]
    assert (f"stop checks {r['stop_every_round']:.1f} ms when every row is looked at, "
            f"{r['stop_once_per_check_every']:.2f} ms now; the calculator's calls {r['hook']:.1f} ms "
            f"(each insert's tokens are now encoded once per run: "
            f"{before['round_ms']['hook']:.1f} ms before") in doc
    assert f"scoring the finished samples {r['scoring']:.1f} ms" in doc
    manifest = json.loads((ROOT / "results/distill/gpu_round1/samples/manifest.json").read_text())
    totals = next(json.loads(line) for line in
                  open(ROOT / "results/distill/gpu_round1/session.log") if line.startswith('{"shard"'))
    assert totals["drawn"] == manifest["problems"] * manifest["k"]
    tokens, seconds = totals["new_tokens"], totals["seconds"]
    assert f"about {seconds / (tokens / B) * 1e3:.0f} ms per decoding step" in doc
    assert f"({tokens / 1e6:.2f} M tokens over {B} rows in {seconds:.0f} s" in doc


def test_tool_rounds_figures():
    """benchmarks/tool_rounds.py's committed run: every share drew share 0's samples, fewer
    rounds cost more steps, and docs/sample_distill.md's table quotes each line."""
    lines = _jsonl(ROOT / "results/distill/tool_rounds_xeon.jsonl")
    runs = [line for line in lines if "wait_share" in line]
    last = lines[-1]
    assert [r["wait_share"] for r in runs] == [0.0, 0.125, 0.25]
    assert last["machine"]["cpu"]["model"].startswith("Intel(R) Xeon")
    doc = _doc("sample_distill.md")
    for r in runs:
        assert r["identical_to_first"] == r["samples"] == 128
        assert r["useful_tokens"] / r["seconds"] == pytest.approx(r["tokens_per_s"], abs=0.06)
        assert last["tokens_per_s"][str(r["wait_share"])] == r["tokens_per_s"]
        label = "0 (a round per trigger, the H200 run's rule)" if r["wait_share"] == 0 else r["wait_share"]
        assert (f"| {label} | {r['rounds']} | {r['steps']} | {r['waits']:,} | "
                f"{r['tokens_per_s']} | 128 / 128 |") in doc
    assert runs[0]["waits"] == 0
    assert [r["rounds"] for r in runs] == sorted((r["rounds"] for r in runs), reverse=True)
    assert [r["steps"] for r in runs] == sorted(r["steps"] for r in runs)
    first = runs[0]
    assert (f"The {first['hook_calls']} triggers ({first['calculator_inserts']} calculator "
            f"insertions, {first['hook_calls'] - first['calculator_inserts']} declined)") in doc
    assert (f"{runs[1]['steps'] - first['steps']} more decoding steps") in doc
    assert " / ".join(f"{r['decode_s']:.1f}" for r in runs) + " s decoding" in doc


def test_sampling_with_the_calculator_pass_at_4():
    from cotjax import report

    root = ROOT / "results/distill"
    p = report.paired_from_files(root / "cpu_cot_1k/samples", root / "cpu_cot_1k_calc/samples")
    assert (p["n"], p["correct_a"], p["correct_b"], p["only_a"], p["only_b"]) == (300, 19, 35, 8, 24)
    assert f"McNemar p = {p['mcnemar_p']:.3f}" in _doc("sample_distill.md")


def _assert_paired_as_compared(root, c):
    """comparison.json's accuracies and McNemar test are the paired test of its two evals."""
    from cotjax import report

    g = report.paired_from_files(root / "without/predictions.jsonl", root / "with/predictions.jsonl")
    assert (g["correct_a"], g["correct_b"], g["only_a"], g["only_b"], g["mcnemar_p"]) == \
        (round(c["accuracy_without"] * 500), round(c["accuracy_with"] * 500),
         c["only_without"], c["only_with"], c["mcnemar_p"])


def _calls_after_the_sign(rows):
    """Calculator calls that wrote the digits alone after a `=$` the model wrote."""
    return [x for r in rows for x in r["calculator_calls"]
            if x["inserted"][:1].isdigit() and f"=${x['inserted']}" in r["generation"]]


def test_calculator_gemma_figures():
    """results/calculator/gemma_cot_1k: comparison.json is what its predictions give, the hook
    fired after Gemma's `=$` token (the digits alone), and docs/calculator.md quotes it."""
    from cotjax import report

    root = CALC / "gemma_cot_1k"
    c = json.loads((root / "comparison.json").read_text())
    _assert_paired_as_compared(root, c)
    doc = _doc("calculator.md")
    for k in ("without", "with", "with_no_currency_trigger"):
        rows = _jsonl(root / k / "predictions.jsonl")
        if k != "with_no_currency_trigger":
            assert report.error_split(rows) == c[f"errors_{k}"]
        total, valid = sum(r["steps_total"] for r in rows), sum(r["steps_valid"] for r in rows)
        assert f"{valid} of {total} ({100 * valid / total:.1f}%)" in doc, k
    rows = _jsonl(root / "with/predictions.jsonl")
    assert sum(len(r["calculator_calls"]) for r in rows) == c["calculator_calls"]
    assert len(_calls_after_the_sign(rows)) > 20  # it fired after `=$`, writing the digits alone
    assert not _calls_after_the_sign(_jsonl(root / "with_no_currency_trigger/predictions.jsonl"))
    assert f"{c['calculator_calls']} ({c['calculator_changed']})" in doc
    for key in ("arithmetic", "setup", "answer_not_from_chain", "cut"):
        assert f" | {c['errors_without'][key]} | {c['errors_with'][key]} |" in doc, key


def test_calculator_annotation_figures():
    """results/calculator/cot_1k_annot: comparison.json is what its predictions give, the hook
    fired only inside annotations, and docs/calculator.md quotes the figures."""
    from cotjax import report

    root = CALC / "cot_1k_annot"
    c = json.loads((root / "comparison.json").read_text())
    _assert_paired_as_compared(root, c)
    doc = _doc("calculator.md")
    for k in ("without", "with"):
        rows = _jsonl(root / k / "predictions.jsonl")
        assert report.error_split(rows) == c[f"errors_{k}"]
        total, valid = sum(r["steps_total"] for r in rows), sum(r["steps_valid"] for r in rows)
        assert f"{valid} of {total} ({100 * valid / total:.1f}%)" in doc
    calls = [x for r in _jsonl(root / "with/predictions.jsonl") for x in r["calculator_calls"]]
    assert len(calls) == c["calculator_calls"] and all(x["inserted"][:1] != " " for x in calls)
    assert f"{c['calculator_calls']} calls ({c['calculator_changed']} where" in doc
    assert f"McNemar p = {c['mcnemar_p']:.3f}" in doc
    vs = report.paired_from_files(CALC / "cot_1k/without/predictions.jsonl",
                                  root / "with/predictions.jsonl")
    assert f"({vs['only_b']} right only with it, {vs['only_a']} only the other way, " \
           f"p = {vs['mcnemar_p']:.3f})" in doc


def test_the_retrained_smollm2_teacher_is_the_committed_sweep_run():
    """results/teachers/smollm2_cot: the chosen CoT model trained again (resumed from a
    checkpoint, on another machine) evaluated bitwise the validation losses of the committed
    sweep run at every evaluation, so the committed sweep predictions are its greedy answers.
    (The logged training losses are means over the steps since the last log line, and a resume
    starts a new window, so they agree only where both runs' windows do.)"""
    keys = ("val/loss", "val/chain_loss", "val/answer_loss")

    def val(path):
        return {(r["step"], k): r[k] for r in _jsonl(ROOT / path) for k in keys if k in r}

    mine = val("results/teachers/smollm2_cot/metrics.jsonl")
    committed = val("results/gsm8k/sweep/cot_lr2e-4_ep2_metrics.jsonl")
    assert sorted({s for s, _ in committed}) == [100, 200, 300, 400, 500, 600, 688]
    assert mine == committed


def test_the_xeon_retrained_smollm2_teacher_answers_as_the_committed_one():
    """results/teachers/smollm2_cot_xeon: the chosen CoT model trained a third time (on the
    Xeon, resumed twice): its validation losses stay within 1e-4 of the committed run's, and its
    greedy evaluation gets the same problems right, most texts identical, as the doc says."""
    root = ROOT / "results/teachers/smollm2_cot_xeon"
    mine = {r["step"]: r["val/loss"] for r in _jsonl(root / "metrics.jsonl") if "val/loss" in r}
    committed = {r["step"]: r["val/loss"] for r in
                 _jsonl(ROOT / "results/gsm8k/sweep/cot_lr2e-4_ep2_metrics.jsonl")
                 if "val/loss" in r}
    assert set(committed) <= set(mine)
    assert max(abs(mine[s] - committed[s]) for s in committed) < 1e-4
    a = _jsonl(root / "predictions.jsonl")
    b = _jsonl(ROOT / "results/gsm8k/sweep/cot_lr2e-4_ep2_predictions.jsonl")
    assert [x["id"] for x in a] == [x["id"] for x in b]
    assert [x["correct"] for x in a] == [x["correct"] for x in b]
    same = sum(x["generation"] == y["generation"] for x, y in zip(a, b))
    s = json.loads((root / "summary.json").read_text())
    quote = (f"final validation loss {mine[688]:.7f} against {committed[688]:.7f}; greedy, "
             f"{same} of its 500 texts are the committed ones and it gets the same "
             f"{s['correct']} problems right")
    assert quote in _doc("experiments/gsm8k_smollm2.md"), quote


def test_chosen_smollm2_model_with_the_calculator_figures():
    """results/calculator/smollm2_cot/with against the same model's committed greedy answers
    (results/gsm8k/sweep, bitwise the same checkpoint: the test above), as docs/calculator.md
    and the README quote it."""
    from cotjax import report

    root = CALC / "smollm2_cot/with"
    p = report.paired_from_files(ROOT / "results/gsm8k/sweep/cot_lr2e-4_ep2_predictions.jsonl",
                                 root / "predictions.jsonl")
    s = json.loads((root / "summary.json").read_text())
    assert (p["n"], p["correct_b"]) == (s["n"], s["correct"]) == (500, 60)
    doc = _doc("calculator.md")
    assert (f"Accuracy {s['accuracy']:.3f} ({p['correct_b']}) with the calculator against "
            f"{p['correct_a'] / p['n']:.3f} ({p['correct_a']}), the same model's committed greedy "
            f"answers without it: {p['only_b']} right only with it, {p['only_a']} only without, "
            f"McNemar p = {p['mcnemar_p']:.3f}") in doc
    assert (f"greedy accuracy: {s['accuracy']:.3f} ({p['correct_b']} of 500), {p['only_b']} "
            f"problems right only with it against {p['only_a']}, p = {p['mcnemar_p']:.3f}"
            ) in _readme()
    assert (f"Claims valid: {s['steps_valid']} of {s['steps_total']} "
            f"({100 * s['steps_valid'] / s['steps_total']:.1f}%); {s['calculator_calls']} "
            f"calculator calls, {s['calculator_changed']} of them") in doc


def test_target_logits_only_figures():
    """docs/train.md's speeds of train.target_logits_only are the committed benchmark lines."""
    d = ROOT / "results/cpu/epyc_zen3"
    last = [r for r in _jsonl(d / "train_target_logits_only.jsonl") if "cotjax_tokens_per_s" in r]
    by = {(r["arch"], r["target_logits_only"]): r["cotjax_tokens_per_s"] for r in last}
    doc = _doc("train.md")
    for arch in ("gemma3-270m", "smollm2-135m-instruct"):
        assert f"{by[arch, False]} -> {by[arch, True]}" in doc
    gemma = [r for r in last if r["arch"] == "gemma3-270m"]
    assert gemma[0]["losses"] == gemma[1]["losses"]  # the same loss either way
    switch = [r["cotjax_tokens_per_s"] for r in
              _jsonl(d / "train_target_logits_switch_version.jsonl") if "cotjax_tokens_per_s" in r]
    assert f"{switch[1]} against {switch[0]} and {switch[2]}" in doc


def test_target_logits_only_in_the_gemma_retrain():
    """docs/train.md's figures for the Gemma 3 CoT retrain resumed at step 12 with
    train.target_logits_only: its speed, and its losses against the committed run's."""
    rows = _jsonl(ROOT / "results/gsm8k/gemma3_cot_retrain_zen3_metrics.jsonl")
    ref = _jsonl(ROOT / "results/gsm8k/gemma3_cot_metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    committed = {r["step"]: r["loss"] for r in ref if "loss" in r}
    doc = _doc("train.md")
    before = [f"{r['tokens_per_s']:.1f}" for r in train if r["step"] <= 12 and "tokens_per_s" in r]
    assert f"{before[0]} and {before[1]} tokens/s" in doc
    speed = statistics.median(r["tokens_per_s"] for r in train
                              if r["step"] >= 60 and "tokens_per_s" in r)
    assert f"a median {speed:.1f} tokens/s" in doc
    gaps = {r["step"]: abs(r["loss"] - committed[r["step"]]) for r in train
            if r["step"] in committed}
    assert len(gaps) >= 55 and max(gaps) == 289
    resumed = (15, 190)  # intervals across the resumes at steps 12 and 188 average other steps
    assert max(v for k, v in gaps.items() if k <= 150 and k not in resumed) < 1e-4
    assert max(v for k, v in gaps.items() if k not in resumed) < 2.5e-4
    assert min(gaps[k] for k in resumed) > 1e-3
    val = {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}
    ref_val = {r["step"]: r["val/loss"] for r in ref if "val/loss" in r}
    for step in (50, 100, 289):
        assert f"{val[step]:.6f}" in doc and f"{ref_val[step]:.6f}" in doc
        assert abs(val[step] - ref_val[step]) < 1e-5


def _gpu_rows(name):
    """The JSON lines of one launch/gpu_bench.sh stage log (other lines are the libraries')."""
    path = ROOT / "results/gpu/h200_llama1b" / f"{name}.log"
    return [json.loads(line) for line in open(path) if line.startswith("{")]


def test_h200_llama1b_rows_are_the_committed_runs():
    """docs/train.md's 1B-class H200 table and README's line are the committed logs' last lines,
    and each figure is the best round the log printed; the cuDNN test log shows it ran there."""
    doc, readme = _doc("train.md"), _readme()
    last = {}
    for name in ("llama1b_fused_s1024_b8", "llama1b_fused_s2048_b8", "llama1b_reference_s1024_b8"):
        rows = _gpu_rows(name)
        r = last[name] = rows[-1]
        assert r["machine"]["device"] == "NVIDIA H200" and r["dtype"] == "bfloat16"
        assert (r["arch"], r["layers"], r["weights"]) == ("llama3.2-1b", 16, "random")
        for fw in ("cotjax", "torch"):
            rounds = [x["tokens_per_s"] for x in rows if x.get("framework") == fw]
            if r[f"{fw}_tokens_per_s"] is not None:
                assert r[f"{fw}_tokens_per_s"] == max(rounds)
        torch_cell = (f"{r['torch_tokens_per_s']:,.0f} | {r['ratio']:.3f}" if r["ratio"]
                      else "- | -")
        assert (f"| {r['cotjax_tokens_per_s']:,.0f} | {torch_cell} | "
                f"{r['mfu']:.3f} | {r['mfu_causal']:.3f} |") in doc, name
    short, long = last["llama1b_fused_s1024_b8"], last["llama1b_fused_s2048_b8"]
    assert short["torch_compile"] and long["torch_compile"] and short["attention"] == "fused"
    assert (f"cotjax {short['cotjax_tokens_per_s']:,.0f} / {long['cotjax_tokens_per_s']:,.0f} "
            f"tok/s, MFU {short['mfu']:.3f} / {long['mfu']:.3f} of the bf16 spec peak, level with "
            f"PyTorch + `torch.compile` (ratio {short['ratio']:.3f} / {long['ratio']:.3f})") in readme
    assert "8 passed" in (ROOT / "results/gpu/h200_llama1b/cudnn_test.log").read_text()


def test_calculator_gemma3_cot_figures():
    """results/calculator/gemma3_cot (greedy only): comparison.json is what its predictions give,
    and docs/calculator.md's Gemma 3 CoT section and README quote it."""
    from collections import Counter

    from cotjax import report

    root = CALC / "gemma3_cot"
    c = json.loads((root / "comparison.json").read_text())
    doc = _doc("calculator.md")
    section = doc[doc.index("## Experiment: the Gemma 3 CoT model"):
                  doc.index("## Experiment: a CPU stand-in CoT model")]
    g, rows = _greedy_calculator_figures(root, c, section)
    assert g["n"] == 500
    assert (f"| {c['accuracy_without']:.3f} ({g['correct_a']}) | {c['accuracy_with']:.3f} "
            f"({g['correct_b']}); {g['only_a']} right only without, {g['only_b']} only with, "
            f"McNemar p = {g['mcnemar_p']:.3f} |") in section
    assert f"| {c['calculator_calls']} ({c['calculator_changed']}) |" in section
    moved = Counter(report.error_kind(b) for a, b in zip(rows["without"], rows["with"])
                    if report.error_kind(a) == "arithmetic")
    assert (f"of the {sum(moved.values())} wrong answers with a computing error, it turns "
            f"{moved[None]} into right answers, {moved['setup']} into chains true step by step "
            f"and set up wrongly, {moved['answer_not_from_chain']} into chains whose answer then "
            f"ignores the last value, and {moved['cut']} into loops") in section
    lost = [b for a, b in zip(rows["without"], rows["with"]) if a["correct"] and not b["correct"]]
    assert f"It also loses {len(lost)} answers" in section and len(lost) == g["only_a"]
    assert (f"valid ({100 * c['steps_valid_without']:.1f}% → {100 * c['steps_valid_with']:.1f}%) "
            f"but not the answers ({c['accuracy_without']:.3f} → {c['accuracy_with']:.3f}, "
            f"p = {c['mcnemar_p']:.1f})") in _readme()
