"""Process supervision: a chain's steps and their labels (Math-Shepherd's Monte Carlo labels and
the step checker's verdicts), and how often the two label sources agree.

Steps. A chain (the generation before its answer statement, as cotjax.faithfulness reads it)
splits into steps by a rule: `lines` (default: each non-empty line, as GSM8K writes one step a
line) or `sentences` (a line also ends at `. `, `! ` or `? `; for models that write paragraphs).
A step is a character span of the chain, stripped of surrounding whitespace.

Labels of step k (1-based; Wang et al. 2023, "Math-Shepherd"): n completions sampled from the
prefix that ends with step k; `soft` is the share whose final answer is the gold answer, `hard`
is 1 when any is. The checker label is the verdict of the step's arithmetic claims
(cotjax.steps): 1 when every claim holds, 0 when one does not, None without claims. Agreement is
counted on steps that have both, by the step's kind (`valid_claims`, `invalid_claim`).

Pure Python (no JAX); `cotjax label-steps` (cotjax.label_steps) samples the completions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cotjax.answers import answers_equal
from cotjax.steps import StepDetail

SPLITS = ("lines", "sentences")
_BOUNDARY = {"lines": re.compile(r"\n"), "sentences": re.compile(r"\n|(?<=[.!?])[^\S\n]+")}


def split_steps(chain: str, rule: str = "lines") -> list[tuple[int, int]]:
    """The (start, end) character spans of a chain's steps under `rule` (see the docstring)."""
    if rule not in SPLITS:
        raise ValueError(f"step split rule must be one of {SPLITS}, got {rule!r}")
    spans, start = [], 0
    for m in [*_BOUNDARY[rule].finditer(chain), None]:
        end = m.start() if m else len(chain)
        piece = chain[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + len(piece.rstrip())))
        start = m.end() if m else end
    return spans


def prefix_through(chain: str, spans: Sequence[tuple[int, int]], k: int) -> str:
    """The chain through step k (1-based), then a newline when the next step starts on a new
    line, and after the last step (the answer statement has its own line, as in training)."""
    end = spans[k - 1][1]
    following = chain[end:spans[k][0]] if k < len(spans) else "\n"
    return chain[:end] + ("\n" if "\n" in following else "")


def checker_label(span: tuple[int, int], claims: Sequence[StepDetail]) -> tuple[int | None, str]:
    """(label, kind) of a step from the claims whose span lies inside it."""
    inside = [c for c in claims if span[0] <= c.span[0] and c.span[1] <= span[1]]
    if not inside:
        return None, "no_claim"
    if all(c.ok for c in inside):
        return 1, "valid_claims"
    return 0, "invalid_claim"


def mc_label(answers: Sequence[str | None], gold: str, task: str) -> tuple[float, int]:
    """(soft, hard) from the final answers of a step's completions."""
    if not answers:
        raise ValueError("a Monte Carlo label needs at least one completion")
    right = sum(answers_equal(a, gold, task) for a in answers)
    return round(right / len(answers), 4), int(right > 0)


def agreement(rows: Sequence[dict]) -> dict:
    """How the hard MC labels and the checker labels of labelled chains (`cotjax label-steps`
    lines) compare: on steps that have both, the share that agree, a confusion table, and the
    same per step kind; with the label rates and the steps without a checker label."""
    steps = [s for r in rows for s in r["steps"]]
    both = [s for s in steps if s["checker"] is not None]
    table = {f"mc{m}_checker{c}": sum(s["hard"] == m and s["checker"] == c for s in both)
             for m in (0, 1) for c in (0, 1)}
    kinds = {}
    for kind in ("valid_claims", "invalid_claim", "no_claim"):
        mine = [s for s in steps if s["kind"] == kind]
        kinds[kind] = {"steps": len(mine),
                       "mc_hard_positive": _share(sum(s["hard"] for s in mine), len(mine)),
                       "mc_soft_mean": _share(sum(s["soft"] for s in mine), len(mine))}
    return {"chains": len(rows), "steps": len(steps),
            "mc_hard_positive": _share(sum(s["hard"] for s in steps), len(steps)),
            "checker_labelled": len(both),
            "checker_positive": _share(sum(s["checker"] for s in both), len(both)),
            "agreement": _share(sum(s["hard"] == s["checker"] for s in both), len(both)),
            "confusion": table, "by_kind": kinds}


def _share(count: float, total: int) -> float | None:
    return round(count / total, 4) if total else None
