"""Final answers: extraction from generated text (strict and flexible), equality, majority
votes, gold normalisation, and the chain before an answer statement.

Pure Python, a leaf beside cotjax.steps: records (answers inside think-tag and chat records),
scoring and distillation all read answers the same way. `cotjax.scoring` re-exports the names.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from fractions import Fraction

from cotjax.steps import SIGNED_NUM, normalise_number, normalise_text, to_fraction

TASKS = ("gsm8k", "aqua")

# ---------------------------------------------------------------------------------------------
# Answer extraction


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; supported tasks: {', '.join(TASKS)}")


# Strict answers: a final-answer statement, then the answer right after it. Statements: "The
# answer is", "The final answer is", "The correct answer is", "Final answer is", "Answer:" (also
# "Final Answer:", "**Answer:**") and "\boxed{...}"; below them all, "####". Between the
# statement and the answer only decoration may sit: spaces, ":", "*", "$", "\boxed{", "\(", "\[",
# "{". A number that merely ends a sentence ("So she has 5 apples.") is no statement; neither is
# "answer" inside a sentence ("Each correct answer is 2 points", "she answered 5").
#
# Which statement wins: the first (leftmost) answer statement in the text, whatever its spelling.
# A model that has stated its answer usually runs on (a new question, another attempt), so a later
# statement answers something else. A statement not followed by an answer ("Answer: Tom has ...")
# is skipped, so "Final Answer: The final answer is 18" gives 18. "####" (GSM8K's own marker) ranks
# below every answer statement, wherever it stands: it is also a Markdown heading ("#### 1" over a
# model's first step), so "#### 1 ... The answer is: 102" gives 102.
#
# Every repeat is bounded and the alternatives start on distinct characters: adjacent unbounded
# `\s*` would backtrack quadratically on long whitespace, and hostile text must stay linear.
_DECORATION = r"(?:[\s:*$]|\\boxed\{|\\\(|\\\[|\\\$|\{){0,6}"
_ANSWER_IS = (r"(?:(?:the|my|our)\s{1,3}(?:(?:final|correct)\s{1,3})?|final\s{1,3})"
              r"answer\s{1,3}is")
_ANSWER_COLON = r"(?:final\s{1,3})?answer[*\s]{0,4}:"
_GSM8K_STATEMENT = re.compile(
    rf"(?:(?<![A-Za-z])(?i:{_ANSWER_IS}|{_ANSWER_COLON})|\\boxed\{{)" + _DECORATION + SIGNED_NUM
)
_GSM8K_HASHES = re.compile(r"####" + _DECORATION + SIGNED_NUM)
_ANY_NUMBER = re.compile(SIGNED_NUM)
# Multiple choice: the answer statements above ("is" optional after "answer": "Answer C",
# "ANSWER:C", "The answer is option D"), "the correct option/choice is (C)" and "\boxed{C}", the
# first one winning; no "####". The letter is A-E, upper case or in parentheses ("(c)"), and stands
# alone ("A train" after a statement is still A: a model's "Answer: A) 54" is common, an article
# right after a statement is not).
_AQUA_PHRASE = (r"answer(?:\s{0,3}is)?"
                r"|(?:correct|right|best|final)\s{1,3}(?:option|choice)(?:\s{1,3}is)?")
_AQUA_STATEMENT = re.compile(
    rf"(?:(?<![A-Za-z])(?i:{_AQUA_PHRASE}){_DECORATION}(?:(?i:option|choice)\s{{0,3}})?"
    r"|\\boxed\{\s{0,3})"
    r"(?:\(([A-Ea-e])\)|\(?([A-E])(?![A-Za-z0-9]))"
)
_AQUA_LETTER = re.compile(r"(?<![A-Za-z0-9])(?:\(([a-e])\)|([A-E])(?![A-Za-z0-9]))")


def extract_answer(text: str, task: str, flexible: bool = False) -> str | None:
    """The final answer in `text`, normalised; None when there is none.

    Strict (the default): the answer right after the first final-answer statement (see
    `_GSM8K_STATEMENT` / `_AQUA_STATEMENT`): gsm8k a number after "The answer is", "The final
    answer is", "Answer:", in "\\boxed{}", else after "####"; aqua a letter A-E after "The
    answer is", "Answer: (C)", "ANSWER:C", "the correct option is". The first statement wins:
    what follows it is usually a run-on generation. With `flexible`, when there is no
    statement: gsm8k the last number in the text, aqua the last standalone letter.
    """
    check_task(task)
    text = normalise_text(text)
    if task == "gsm8k":
        return _extract_gsm8k(text, flexible)
    return _extract_aqua(text, flexible)


def chain_before_answer(text: str, task: str) -> str | None:
    """The reasoning of a generation without its final-answer statement and what follows it
    (a run-on), for training on a model's own chains; None when there is no strict statement.
    A statement's lead-in on its own line ("So the answer is 8") goes with it; a line that holds
    a step before the statement ("... = 8. The answer is 8") keeps the step."""
    check_task(task)
    text = normalise_text(text)
    match = (_GSM8K_STATEMENT.search(text) or _GSM8K_HASHES.search(text) if task == "gsm8k"
             else _AQUA_STATEMENT.search(text))
    if match is None:
        return None
    head = text[:match.start()]
    line_start = head.rfind("\n") + 1
    if not re.search(r"[0-9=]", head[line_start:]):
        head = head[:line_start]
    return head.strip()


def extract_answer_flexible(text: str, task: str) -> str | None:
    return extract_answer(text, task, flexible=True)


def _extract_gsm8k(text: str, flexible: bool) -> str | None:
    match = _GSM8K_STATEMENT.search(text) or _GSM8K_HASHES.search(text)
    if match is None and flexible:
        last = collections.deque(_ANY_NUMBER.finditer(text), maxlen=1)
        match = last[0] if last else None
    return normalise_number(match.group(1), match.group(2)) if match else None


def _extract_aqua(text: str, flexible: bool) -> str | None:
    match = _AQUA_STATEMENT.search(text)
    if match:
        return (match.group(1) or match.group(2)).upper()
    if not flexible:
        return None
    last = None
    for match in _AQUA_LETTER.finditer(text):
        # "A train leaves..." is an article, not option A.
        if match.group(2) == "A" and re.match(r"\s[a-z]", text[match.end() : match.end() + 2]):
            continue
        last = (match.group(1) or match.group(2)).upper()
    return last


def _answer_key(answer: str, task: str) -> Fraction | str:
    """What equal answers share: a number for gsm8k (18.00 == 18), a letter for aqua."""
    if task == "gsm8k":
        value = to_fraction(answer)
        return value if value is not None else answer.strip()
    return answer.strip().upper()


def answers_equal(a: str | None, b: str | None, task: str) -> bool:
    check_task(task)
    if a is None or b is None:
        return False
    return _answer_key(a, task) == _answer_key(b, task)


def majority_vote(answers: Sequence[str | None], task: str,
                  weights: Sequence[float] | None = None) -> str | None:
    """The most common answer (self-consistency), or the one with the most total weight
    (`weights`, one per answer: a reward model's scores); None answers are ignored, equal
    numbers are one vote group, ties go to the answer seen first. Returns the group's first
    spelling."""
    check_task(task)
    if weights is None:
        weights = [1] * len(answers)
    elif len(weights) != len(answers):
        raise ValueError(f"{len(weights)} vote weights for {len(answers)} answers")
    groups: dict[Fraction | str, list] = {}
    for answer, weight in zip(answers, weights):
        if answer is not None:
            groups.setdefault(_answer_key(answer, task), [answer, 0])[1] += weight
    if not groups:
        return None
    return max(groups.values(), key=lambda group: group[1])[0]  # max keeps the first on ties


def normalise_gold(gold: str, task: str) -> str:
    gold = normalise_text(gold).strip()
    if task == "aqua":
        return gold.upper()
    match = re.fullmatch(SIGNED_NUM, gold)
    return normalise_number(match.group(1), match.group(2)) if match else gold


def chain_of(generation: str, task: str) -> str:
    """The reasoning before the answer statement (the whole generation when it states none),
    without a GSM8K `#### N` answer line the model wrote before its statement."""
    chain = chain_before_answer(generation, task)
    # normalised either way (as chain_before_answer reads it), so a chain cut by the length
    # limit has the same characters as one with a statement: unicode signs as ASCII
    chain = normalise_text(generation) if chain is None else chain
    return re.split(r"(?m)^[^\S\n]*####", chain)[0].strip()
