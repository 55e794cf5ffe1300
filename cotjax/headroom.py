"""`cotjax rerank --headroom`: what a verifier that orders a problem's right and wrong samples
with a given AUROC would select among sampled chains, before any reward model is trained.

an earlier rerank's OUT (its predictions: every sample's answer and correctness) -> per AUROC,
simulated verifier scores (a binormal model, calibrated) -> the PRM selectors
(cotjax.rerank.selection_table) -> OUT/headroom.json and OUT/headroom.png. A trained PRM's
within-problem AUROC (in its rerank's selection.json) read against this table says whether
it could meet a goal on these samples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from cotjax import paths, prm
from cotjax.report import paired_comparison
from cotjax.rerank import accuracies, read_rerank, selection_table

HEADROOM_DRAWS = 20  # simulated verifiers per AUROC: enough for a mean to 0.1-0.2 points


def _verifier_scores(rng, correct: np.ndarray, d: float, base_rate: float) -> np.ndarray:
    """One simulated verifier's scores of one problem's samples: z ~ N(d, 1) for a right
    sample, N(0, 1) for a wrong one (so a right sample outscores a wrong one with probability
    Phi(d / sqrt 2)), read as the calibrated P(right | z) at the samples' base rate, the
    probability a verifier trained with cross-entropy would learn to give."""
    z = rng.standard_normal(len(correct)) + d * correct
    log_odds = d * z - d * d / 2 + np.log(base_rate / (1 - base_rate))
    return 1 / (1 + np.exp(-log_odds))


def _simulated_draw(groups: dict, n: int, d: float, base_rate: float, rng, task: str
                    ) -> tuple[dict, list[float]]:
    """({problem: selections}, within-problem AUROCs) of one simulated verifier."""
    scores, within = {}, []
    for p, g in groups.items():
        correct = np.array([r["correct"] for r in g], dtype=float)
        drawn = _verifier_scores(rng, correct, d, base_rate)
        scores.update({(p, r["sample"]): [float(v)] for r, v in zip(g, drawn)})
        within.append(prm.auroc(drawn.tolist(), correct.astype(bool).tolist()))
    return selection_table(groups, scores, None, n, "min", task), \
        [w for w in within if w is not None]


def headroom(groups: dict, aurocs: Sequence[float], task: str = "gsm8k", goal: float = 0.03,
             draws: int = HEADROOM_DRAWS) -> dict:
    """What a verifier that tells a problem's right samples from its wrong ones with the given
    AUROC would select among these samples (`_verifier_scores`: scores independent given
    correctness, a binormal model): per AUROC, verifier-best and verifier-weighted accuracy
    over `draws` simulated verifiers (mean, min, max), how many of them beat majority by
    `goal` with McNemar p < 0.05, and the AUROC the draws realised within problems. It answers
    "how good must a PRM be to help here?" without training one."""
    from statistics import NormalDist

    if any(not 0.5 <= a < 1 for a in aurocs):
        raise ValueError(f"headroom: AUROCs must be in [0.5, 1), got {list(aurocs)}")
    rows = [r for g in groups.values() for r in g]
    base_rate = min(max(sum(r["correct"] for r in rows) / len(rows), 1e-3), 1 - 1e-3)
    n = len(next(iter(groups.values())))  # samples per problem (every group holds n)
    plain = selection_table(groups, None, None, n, "min", task)
    majority = {p: t["majority"]["correct"] for p, t in plain.items()}
    need = math.ceil(goal * len(groups) - 1e-9)  # problems over the vote that the goal asks
    out = {"problems": len(groups), "samples_per_problem": n,
           "sample_accuracy": round(base_rate, 4), "draws": draws, "goal": goal,
           **{s: v["accuracy"] for s, v in accuracies(plain).items()
              if s in ("majority", "pass_at_n")}, "by_auroc": {}}
    for a in aurocs:
        d = 2**0.5 * NormalDist().inv_cdf(a)
        acc, met, realised = {"prm_best": [], "prm_weighted": []}, 0, []
        for k in range(draws):
            # a stream per (draw, AUROC): each column of the table is its own experiment
            table, within = _simulated_draw(groups, n, d, base_rate,
                                            np.random.default_rng([k, round(a * 10_000)]), task)
            for s in acc:
                acc[s].append(sum(t[s]["correct"] for t in table.values()) / len(groups))
            test = paired_comparison({p: t["prm_weighted"]["correct"] for p, t in table.items()},
                                     majority)
            met += test["only_a"] - test["only_b"] >= need and test["mcnemar_p"] < 0.05
            realised += within
        out["by_auroc"][str(a)] = {
            **{s: {"mean": round(sum(v) / draws, 4), "min": round(min(v), 4),
                   "max": round(max(v), 4)} for s, v in acc.items()},
            "goal_met": met,
            "realised_auroc": round(sum(realised) / len(realised), 4) if realised else None}
    return out


def write_headroom(out_of_rerank: str, aurocs: Sequence[float], out: str) -> dict:
    """headroom() of an earlier rerank's samples (its OUT) as OUT/headroom.json and a plot."""
    groups, _, sel = read_rerank(out_of_rerank)
    result = {"samples": out_of_rerank, **headroom(groups, aurocs, sel.get("task", "gsm8k"))}
    out_dir = paths.path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths.write_text(out_dir / "headroom.json", json.dumps(result, indent=1) + "\n")
    _plot_headroom(result, out_dir / "headroom.png")
    return result


def _plot_headroom(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [float(a) for a in result["by_auroc"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s in ("prm_best", "prm_weighted"):
        ax.plot(xs, [v[s]["mean"] for v in result["by_auroc"].values()], marker="o",
                label=f"simulated verifier: {s}")
    for y, style, name in ((result["majority"], "-", "majority"),
                           (result["majority"] + result["goal"], ":", "majority + goal"),
                           (result["pass_at_n"], "--", "pass@N")):
        ax.axhline(y, color="grey", linestyle=style, linewidth=1, label=name)
    ax.set_xlabel("within-problem AUROC of the verifier")
    ax.set_ylabel(f"accuracy at N = {result['samples_per_problem']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
