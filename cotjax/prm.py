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

Reward targets. A process reward model (PRM) reads a score at the end of every step and at the
end of the generation (its answer statement, labelled with the chain's correctness: the one
"completion" of the full chain is the chain itself); an outcome reward model (ORM) reads one
score, at the end of the generation. `reward_target` turns a labelled line into the generation,
the character offsets where scores are read and their labels; `cotjax.tokenize.reward_example`
makes tokens of them.

Selectors. From N scored samples of a problem: `majority` (the most frequent answer), `orm_best`
(the answer of the sample with the best outcome score), `prm_best` (the best chain by its
aggregated step scores: `min`, `prod`, `last` or `step_min`), `prm_weighted` (answers voted
with the sum of their chains' aggregated scores; Uesato et al. 2022, Li et al. 2023), and
`pass_at_n` (any sample right: the ceiling of every selector).

Pure Python (no JAX); `cotjax label-steps` (cotjax.label_steps) samples the completions and
`cotjax rerank` (cotjax.rerank) scores samples with trained reward models.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from cotjax import paths
from cotjax.answers import answers_equal, chain_of, majority_vote
from cotjax.defaults import REWARD_OBJECTIVES
from cotjax.steps import StepDetail, check_steps, normalise_text

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


def checker_labels(chain: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int | None, str]]:
    """(label, kind) of every step of a chain: the step checker reads the chain once."""
    claims = check_steps(chain).steps
    return [checker_label(span, claims) for span in spans]


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


# ---------------------------------------------------------------------------------------------
# Reward targets: where a reward model reads its scores, and their labels.

LABEL_KINDS = ("hard", "soft", "checker")  # Monte Carlo hard / soft, the step checker


def read_label_rows(path: str) -> list[tuple[str, dict]]:
    """(file:line, row) of every line of a jsonl file, or of a directory's `labels-*.jsonl`
    (`cotjax label-steps`) or else `samples-*.jsonl` (`cotjax sample`) shards."""
    root = paths.path(path)
    if root.is_dir():
        files = sorted(root.glob("labels-*.jsonl")) or sorted(root.glob("samples-*.jsonl"))
        if not files:
            raise FileNotFoundError(f"{path}: no labels-*.jsonl or samples-*.jsonl files (is it "
                                    "a `cotjax label-steps` or `cotjax sample` output?)")
    elif root.is_file():
        files = [root]
    else:
        raise FileNotFoundError(f"data.labels={path!r} does not exist")
    rows = []
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{f}:{n}: not JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{f}:{n}: not a JSON object")
            rows.append((f"{f}:{n}", row))
    return rows


def _field(row: dict, key: str, kind, where: str):
    value = row.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, "
                         f"got {value!r}")
    return value


def chain_start(generation: str, chain: str, where: str) -> int:
    """Where `chain` (the stripped text before the answer statement) starts in `generation`."""
    start = generation.find(chain) if chain else 0
    if start < 0 or generation[:start].strip():
        raise ValueError(f"{where}: the chain is not the start of the generation")
    return start


def reward_target(row: dict, objective: str, labels: str = "hard", where: str = "",
                  task: str = "gsm8k", rule: str = "lines"
                  ) -> tuple[str, list[int], list[float | None]]:
    """(generation, ends, labels) of a labelled line: the character offsets in the generation
    after which a reward model's score is read, and the label of each (None: read, not
    trained). objective 'prm' needs a `cotjax label-steps` line (its steps, checked against its
    chain), or with `labels='checker'` also a `cotjax sample` line (the checker labels its steps
    here); 'orm' takes any line with a generation and `correct` (sample lines too)."""
    if objective not in REWARD_OBJECTIVES:
        raise ValueError(f"reward objective must be prm or orm, got {objective!r}")
    if labels not in LABEL_KINDS:
        raise ValueError(f"train.reward_labels must be one of {LABEL_KINDS}, got {labels!r}")
    generation = _field(row, "generation", str, where)
    correct = float(_field(row, "correct", bool, where))
    if objective == "prm" and "chain" not in row and labels == "checker":
        # a `cotjax sample` line: the checker's verdicts need no rollouts, so they are made here
        chain = chain_of(generation, task)
        spans = split_steps(chain, rule)
        step_labels = [None if v is None else float(v) for v, _ in checker_labels(chain, spans)]
    elif objective == "prm":
        if "chain" not in row:
            raise ValueError(f"{where}: no 'chain' (a `cotjax sample` line?): Monte Carlo "
                             f"labels ({labels}) need `cotjax label-steps` lines; "
                             "train.reward_labels=checker also reads sample lines")
        if row.get("split", rule) != rule:
            raise ValueError(f"{where}: steps split by {row.get('split')!r}, the run reads "
                             f"{rule!r} steps (data.labels_split)")
        if "steps" not in row:
            raise ValueError(f"{where}: no 'steps' (objective prm needs `cotjax label-steps` "
                             "lines, with Monte Carlo labels per step)")
        chain = _field(row, "chain", str, where)
        spans, step_labels = [], []
        for k, step in enumerate(_field(row, "steps", list, where), 1):
            a, b = step.get("span") or (None, None)
            if not (isinstance(a, int) and isinstance(b, int)) or chain[a:b] != step.get("text") \
                    or (spans and a < spans[-1][1]) or not a < b:
                raise ValueError(f"{where}: step {k} ({step.get('text')!r} at {step.get('span')})"
                                 " does not match its chain")
            value = step.get(labels)
            unchecked = labels == "checker" and value is None  # no claim: nothing to check
            if not unchecked and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not 0 <= value <= 1):
                raise ValueError(f"{where}: step {k}: label {labels!r} must be in [0, 1], "
                                 f"got {value!r}")
            spans.append((a, b))
            step_labels.append(None if unchecked else float(value))
    else:
        chain = chain_of(generation, task)
        spans = split_steps(chain, rule)
        step_labels = [None] * len(spans)
    # The chain is read from the normalised text (x for *, unicode minus...), which keeps every
    # character's length: its offsets are the generation's.
    start = chain_start(normalise_text(generation), chain, where)
    ends = [start + b for _, b in spans]
    end = len(generation.rstrip())
    if not ends or end > ends[-1]:  # the answer statement (or a chain without steps)
        ends.append(end)
        step_labels.append(None)
    if end == 0:
        raise ValueError(f"{where}: empty generation")
    step_labels[-1] = correct if objective == "orm" or step_labels[-1] is None else \
        step_labels[-1]
    return generation, ends, step_labels


def score_ends(generation: str, task: str = "gsm8k", rule: str = "lines",
               where: str = "") -> list[int]:
    """Where a reward model reads a sample's scores: every step's end, then the generation's
    end (the same places `reward_target` labels)."""
    return reward_target({"generation": generation, "correct": False}, "orm", task=task,
                         rule=rule, where=where)[1]


# ---------------------------------------------------------------------------------------------
# Selectors over N scored samples of a problem.

AGGREGATES = ("min", "prod", "last", "step_min")
SELECTORS = ("majority", "checked_majority", "orm_best", "prm_best", "prm_weighted",
             "pass_at_n")


def aggregate(scores: Sequence[float], how: str) -> float:
    """A chain's score from its step scores (probabilities): the weakest read point (`min`), all
    right (`prod`), the score read at the end (`last`), or the weakest step end (`step_min`:
    `min` without the end-of-generation score, which a PRM learns from the chain's outcome, so
    that when right chains are rare it is every chain's minimum and `min` becomes `last`; a
    chain with no step before its answer keeps that score)."""
    if how not in AGGREGATES:
        raise ValueError(f"PRM aggregate must be one of {AGGREGATES}, got {how!r}")
    if not scores:
        raise ValueError("a chain without scores cannot be aggregated")
    if how == "min":
        return min(scores)
    if how == "prod":
        return math.prod(scores)
    if how == "step_min":
        return min(scores[:-1] or scores)
    return scores[-1]


def _best(answers: Sequence[str | None], scores: Sequence[float]) -> str | None:
    # The best-scored sample among those that state an answer (ties: the first).
    answered = [i for i, a in enumerate(answers) if a is not None]
    if not answered:
        return None
    return answers[max(answered, key=lambda i: (scores[i], -i))]


def select_answers(answers: Sequence[str | None], gold: str, task: str = "gsm8k",
                   step_scores: Sequence[Sequence[float]] | None = None,
                   outcome: Sequence[float] | None = None, how: str = "min",
                   checked: Sequence[bool] | None = None) -> dict:
    """Each selector's answer and whether it is right, from one problem's N samples: their
    final answers (None when unreadable), PRM step scores (probabilities, one list per
    sample), ORM scores and whether the step checker found every claim true (each optional:
    its selectors are left out without them). `checked_majority`, the model-free verifier:
    the majority among the samples whose claims all hold, else among all."""
    if not answers:
        raise ValueError("selection needs at least one sample")

    def pick(answer):
        return {"answer": answer, "correct": answers_equal(answer, gold, task)}

    out = {"majority": pick(majority_vote(answers, task))}
    if checked is not None:
        held = [a if ok else None for a, ok in zip(answers, checked, strict=True)]
        out["checked_majority"] = pick(majority_vote(held, task) or out["majority"]["answer"])
    if outcome is not None:
        out["orm_best"] = pick(_best(answers, outcome))
    if step_scores is not None:
        chain = [aggregate(s, how) for s in step_scores]
        out["prm_best"] = pick(_best(answers, chain))
        out["prm_weighted"] = pick(majority_vote(answers, task, chain))
    out["pass_at_n"] = {"answer": None,
                        "correct": any(answers_equal(a, gold, task) for a in answers)}
    return out


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The probability that a random positive scores above a random negative (ties count
    half); None without both."""
    pos = sorted(s for s, y in zip(scores, labels, strict=True) if y)
    neg = sorted(s for s, y in zip(scores, labels, strict=True) if not y)
    if not pos or not neg:
        return None
    import bisect

    wins = sum(bisect.bisect_left(neg, p) + 0.5 * (bisect.bisect_right(neg, p)
                                                  - bisect.bisect_left(neg, p)) for p in pos)
    return round(wins / (len(pos) * len(neg)), 4)
