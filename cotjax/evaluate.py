"""Answer extraction, accuracy (strict, flexible, maj@k), arithmetic step checks and reports.

Pure Python, no JAX: `cotjax eval` feeds it generations, tests feed it hand-written text.

Step checking finds every arithmetic claim `expr = value` in a text and evaluates `expr` with the
small recursive-descent parser below over exact fractions. Python's eval is never used: a model's
output is untrusted text, and even "pure arithmetic" eval can hang on `9**9**9**9`. Every path
is bounded (literal length, result size, exponent size, nesting depth, tokens per expression) so
hostile text costs roughly linear time and memory and never raises.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import pathlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from fractions import Fraction

TASKS = ("gsm8k", "aqua")

# Bounds that keep hostile input cheap; real chains stay far below all of them.
_MAX_LITERAL_DIGITS = 40  # longer numerals are "unevaluable", not parsed into huge ints
_MAX_MAGNITUDE_BITS = 200  # |value| above ~1e60 is an overflow
_MAX_DENOMINATOR_BITS = 200  # beyond this, approximate (1/3/3/3... stays cheap)
_MAX_POWER_BITS = 1024  # estimated size of a power's result before computing it
_MAX_DEPTH = 32  # parenthesis nesting; keeps the recursion far from Python's limit
_MAX_SEGMENT_TOKENS = 256  # tokens in one side of a claim
_REL_TOL = Fraction(1, 10**6)  # GSM8K writes 2/3 as 0.6666666667
_FORMAT_PLACES = 10  # decimals shown for computed values

# ---------------------------------------------------------------------------------------------
# Text normalisation and numbers


_UNICODE_DIGIT = re.compile(r"(?![0-9])\d")
_SYMBOLS = str.maketrans({"\u2212": "-", "\u00d7": "*", "\u00f7": "/", "\u2217": "*"})


def _normalise_text(text: str) -> str:
    """Maps unicode minus, times, divide and a spaced en dash to ASCII, digits ('٣') to 0-9."""
    text = text.translate(_SYMBOLS).replace(" \u2013 ", " - ")
    return _UNICODE_DIGIT.sub(lambda m: str(unicodedata.decimal(m.group(), "")), text)


_NUM = r"(?:[0-9]{1,3}(?:,[0-9]{3}(?![0-9]))+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
# A minus sign belongs to a number only when it does not join two words or numbers ("10-12").
_SIGNED_NUM = rf"((?<![\w)])-)?\$?\s?({_NUM})"


def _normalise_number(sign: str | None, digits: str) -> str:
    """'1,234.00' -> '1234', '.5' -> '0.5', '-0.0' -> '0'; string-only, so any length is cheap."""
    whole, _, frac = digits.replace(",", "").partition(".")
    text = (whole.lstrip("0") or "0") + ("." + frac.rstrip("0") if frac.rstrip("0") else "")
    return "-" + text if sign and text != "0" else text


def _to_fraction(text: str) -> Fraction | None:
    text = text.replace(",", "").replace("$", "").strip()
    if len(text) > _MAX_LITERAL_DIGITS + 2:
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _format_value(value: Fraction) -> str:
    """Exact decimal for terminating values, else rounded to _FORMAT_PLACES decimals."""
    rounded = round(value, _FORMAT_PLACES)
    scaled = abs(rounded.numerator) * 10**_FORMAT_PLACES // rounded.denominator
    whole, frac = divmod(scaled, 10**_FORMAT_PLACES)
    frac_text = f"{frac:0{_FORMAT_PLACES}d}".rstrip("0")
    return ("-" if rounded < 0 else "") + str(whole) + ("." + frac_text if frac_text else "")


# ---------------------------------------------------------------------------------------------
# Answer extraction


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; supported tasks: {', '.join(TASKS)}")


_GSM8K_PHRASE = re.compile(r"(?i:the\s{1,3}answer\s{1,3}is)[\s:*$]{0,6}" + _SIGNED_NUM)
_GSM8K_HASHES = re.compile(r"####[\s$]{0,6}" + _SIGNED_NUM)
_ANY_NUMBER = re.compile(_SIGNED_NUM)
# Bounded repeats: adjacent unbounded `\s*` would backtrack quadratically on long whitespace.
_AQUA_PHRASE = re.compile(
    r"(?i:answer)(?:\s{0,3}(?i:is))?[\s:]{0,6}(?:(?i:option)\s{0,3})?"
    r"(?:\(([A-Ea-e])\)|\(?([A-E])(?![A-Za-z0-9]))"
)
_AQUA_LETTER = re.compile(r"(?<![A-Za-z0-9])(?:\(([a-e])\)|([A-E])(?![A-Za-z0-9]))")


def extract_answer(text: str, task: str, flexible: bool = False) -> str | None:
    """The final answer in `text`, normalised; None when there is none.

    gsm8k: the number after "The answer is" (case-insensitive), else after "####"; with
    `flexible`, else the last number in the text. aqua: the letter A-E after an answer phrase
    ("The answer is C", "Answer: (C)", "ANSWER:C"); with `flexible`, else the last standalone
    letter. The first answer phrase wins: what follows it is usually a run-on generation.
    """
    _check_task(task)
    text = _normalise_text(text)
    if task == "gsm8k":
        return _extract_gsm8k(text, flexible)
    return _extract_aqua(text, flexible)


def extract_answer_flexible(text: str, task: str) -> str | None:
    return extract_answer(text, task, flexible=True)


def _extract_gsm8k(text: str, flexible: bool) -> str | None:
    match = _GSM8K_PHRASE.search(text) or _GSM8K_HASHES.search(text)
    if match is None and flexible:
        last = collections.deque(_ANY_NUMBER.finditer(text), maxlen=1)
        match = last[0] if last else None
    return _normalise_number(match.group(1), match.group(2)) if match else None


def _extract_aqua(text: str, flexible: bool) -> str | None:
    match = _AQUA_PHRASE.search(text)
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
        value = _to_fraction(answer)
        return value if value is not None else answer.strip()
    return answer.strip().upper()


def answers_equal(a: str | None, b: str | None, task: str) -> bool:
    _check_task(task)
    if a is None or b is None:
        return False
    return _answer_key(a, task) == _answer_key(b, task)


def majority_vote(answers: Sequence[str | None], task: str) -> str | None:
    """The most common answer (self-consistency); None answers are ignored, equal numbers are
    one vote group, ties go to the answer seen first. Returns the group's first spelling."""
    _check_task(task)
    groups: dict[Fraction | str, list] = {}
    for answer in answers:
        if answer is not None:
            groups.setdefault(_answer_key(answer, task), [answer, 0])[1] += 1
    if not groups:
        return None
    return max(groups.values(), key=lambda group: group[1])[0]  # max keeps the first on ties


# ---------------------------------------------------------------------------------------------
# Safe arithmetic


class _ParseError(Exception):
    """The token sequence is not an arithmetic expression (so not a claim)."""


_BINARY_ONLY = frozenset({"*", "/", "//", "x", "X", "%", "^", "**"})
_MUL_OPS = frozenset({"*", "/", "//", "x", "X", "%"})


def _is_number(token: str) -> bool:
    return token[0] in "0123456789."


def _starts_operand(token: str | None) -> bool:
    return token is not None and (_is_number(token) or token == "(")


class _Evaluator:
    """Recursive descent over tokens with exact fractions.

    expr := term (('+'|'-') term)*       term := unary (('*'|'x'|'/'|'//'|'%'|implicit) unary)*
    unary := ('+'|'-')* power             power := postfix (('^'|'**') signs postfix)*  (right)
    postfix := atom '%'*  (percent)       atom := number | '(' expr ')'

    Numbers include mixed numbers ("1 1/2"). `x` multiplies only between operands; `2(3+4)`
    multiplies; `%` between two operands is modulo, otherwise percent (`20% * 50`). A value of
    None means "unevaluable" (division by zero, overflow); it propagates so the parse itself can
    finish and the claim is still counted (as invalid).
    """

    def __init__(self, tokens: Sequence[str]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0
        self.ops = 0
        self.error: str | None = None

    def evaluate(self) -> Fraction | None:
        value = self._expr()
        if self.pos != len(self.tokens):
            raise _ParseError(f"unexpected {self.tokens[self.pos]!r}")
        return value

    def _peek(self, ahead: int = 0) -> str | None:
        index = self.pos + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def _fail(self, reason: str) -> None:
        self.error = self.error or reason

    def _expr(self) -> Fraction | None:
        value = self._term()
        while (op := self._peek()) in ("+", "-"):
            self.pos += 1
            value = self._binary(op, value, self._term())
        return value

    def _term(self) -> Fraction | None:
        value = self._unary()
        while True:
            op = self._peek()
            if op == "(":
                op = "*"  # 2(50+100) multiplies, as GSM8K writes it
            elif op in _MUL_OPS:
                self.pos += 1
                if op in ("x", "X") and not _starts_operand(self._peek()):
                    raise _ParseError("'x' is a variable here ('3x + 2')")
            else:
                return value
            value = self._binary(op, value, self._unary())

    def _signs(self) -> int:
        sign = 1
        while (op := self._peek()) in ("+", "-"):
            self.pos += 1
            sign = -sign if op == "-" else sign
        return sign

    def _unary(self) -> Fraction | None:
        sign = self._signs()
        value = self._power()
        return -value if sign < 0 and value is not None else value

    def _power(self) -> Fraction | None:
        # Collected then folded right to left: iterative, so `2^2^2^...` cannot recurse deeply.
        operands, signs = [self._postfix()], [1]
        while self._peek() in ("^", "**"):
            self.pos += 1
            signs.append(self._signs())
            operands.append(self._postfix())
        value = operands[-1]
        for index in range(len(operands) - 1, 0, -1):
            exponent = -value if signs[index] < 0 and value is not None else value
            value = self._binary("^", operands[index - 1], exponent)
        return value

    def _postfix(self) -> Fraction | None:
        value = self._atom()
        while self._peek() == "%" and not _starts_operand(self._peek(1)):
            self.pos += 1
            self.ops += 1
            value = value / 100 if value is not None else None
        return value

    def _atom(self) -> Fraction | None:
        token = self._peek()
        self.pos += 1
        if token is None:
            raise _ParseError("expression ends early")
        if token == "(":
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                raise _ParseError("parentheses nested too deeply")
            value = self._expr()
            if self._peek() != ")":
                raise _ParseError("unclosed parenthesis")
            self.pos += 1
            self.depth -= 1
            return value
        if _is_number(token):
            return self._literal(token)
        raise _ParseError(f"unexpected {token!r}")

    def _literal(self, token: str) -> Fraction | None:
        digits = token.replace(",", "")
        if len(digits) > _MAX_LITERAL_DIGITS + 1:
            self._fail("number too long")
            return None
        whole, _, fraction = digits.rpartition(" ")  # "1 1/2", or "1/3" in "25 / 1/3"
        if not fraction.partition("/")[1]:
            return Fraction(fraction)
        numerator, _, denominator = fraction.partition("/")
        if int(denominator) == 0:
            self._fail("division by zero")
            return None
        return Fraction(int(whole or 0)) + Fraction(int(numerator), int(denominator))

    def _binary(self, op: str, a: Fraction | None, b: Fraction | None) -> Fraction | None:
        self.ops += 1
        if a is None or b is None:
            return None
        if op in ("/", "//", "%") and b == 0:
            self._fail("division by zero")
            return None
        if op == "^":
            return self._pow(a, b)
        if op == "+":
            return self._bounded(a + b)
        if op == "-":
            return self._bounded(a - b)
        if op == "/":
            return self._bounded(a / b)
        if op == "//":  # GSM8K's calculator annotations are Python: <<560//10=56>>
            return self._bounded(Fraction(a // b))
        if op == "%":
            return self._bounded(a % b)
        return self._bounded(a * b)  # '*', 'x', 'X'

    def _pow(self, base: Fraction, exponent: Fraction) -> Fraction | None:
        if exponent.denominator != 1:
            return self._root(base, exponent)
        if base == 0 and exponent < 0:
            self._fail("division by zero")
            return None
        size = max(base.numerator.bit_length(), base.denominator.bit_length())
        if base not in (0, 1, -1) and abs(exponent) * size > _MAX_POWER_BITS:
            self._fail("power too large")
            return None
        return self._bounded(base ** int(exponent))

    def _root(self, base: Fraction, exponent: Fraction) -> Fraction | None:
        """Fractional powers (`16^0.5`) in floating point: exact enough for a tolerance check."""
        if base < 0:
            self._fail("fractional power of a negative number")
            return None
        try:
            return self._bounded(Fraction(float(base) ** float(exponent)))
        except (OverflowError, ValueError, ZeroDivisionError):
            self._fail("power too large")
            return None

    def _bounded(self, value: Fraction) -> Fraction | None:
        if value.numerator.bit_length() - value.denominator.bit_length() > _MAX_MAGNITUDE_BITS:
            self._fail("result too large")
            return None
        if value.denominator.bit_length() > _MAX_DENOMINATOR_BITS:
            value = value.limit_denominator(10**30)
        return value


# ---------------------------------------------------------------------------------------------
# Step checking


@dataclasses.dataclass(frozen=True)
class StepDetail:
    """One arithmetic claim `expression = claimed`; computed is None when unevaluable."""

    expression: str
    claimed: str
    computed: str | None
    claimed_value: str | None
    ok: bool
    source: str  # "annotation" (GSM8K `<<e=v>>`) or "text"
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class StepReport:
    """All arithmetic claims of one text. `last_value` is the value the last claim states (its
    right-hand side): the chain's last result, which the final answer should repeat."""

    total: int
    valid: int
    steps: tuple[StepDetail, ...]
    last_value: str | None

    @property
    def all_valid(self) -> bool:
        """True when the text makes at least one claim and every claim holds."""
        return self.total > 0 and self.valid == self.total

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Side:
    """One side of a claim, evaluated."""

    text: str
    value: Fraction | None
    ops: int
    places: int | None  # decimals shown when the side is a bare (signed) number
    error: str | None
    head: _Side | None  # the leading number of `6 + 1` in a running chain `2*3 = 6 + 1 = 7`


_TOKEN = re.compile(
    rf"""
    (?P<ann><<[^<>]*>>)
  | (?P<num>(?:[0-9]+\ |(?<=/\s))[0-9]+/[0-9]+(?![0-9.,/])|{_NUM})
  | (?P<word>[^\W\d_]{{2,}})
  | (?P<op>\*\*|//|[-+*/^%xX])
  | (?P<paren>[()])
  | (?P<eq>=+)
  | (?P<space>(?:[^\S\n]|\$)+)
  | (?P<other>[\s\S])
    """,
    re.VERBOSE,
)

_Token = tuple[str, int, int]  # text, start, end


def check_steps(text: str) -> StepReport:
    """Finds and checks every arithmetic claim `expr = value [= value ...]` in `text`.

    A claim is a run of numbers, operators (+ - * x / // ^ ** %), parentheses and `=` that
    words, newlines or other punctuation do not interrupt; `$` and spaces are ignored. Its left
    side must hold an operator ("Week 2 = 35 + 35" is a label). A side that does not parse
    ("Let x = 5", "2x = 10") or that continues algebra ("S + 143 = 200 - 16") makes no claim; a
    side that parses but cannot be evaluated (division by zero, `10^10^10`) makes an invalid one.

    GSM8K annotations: `<<48/2=24>>` is one claim. It and the number echoing its result right
    after it are cut out of the prose, so `48/2 = <<48/2=24>>24` counts once (the annotation):
    the prose `48/2 =` is left without a value.

    Chains `a = b = c` make one claim per `=`; in a running chain `2*3 = 6 + 1 = 7` each step
    holds when the next side, or the number it starts with, equals the previous side's value.
    A written number may be rounded either way at the precision it shows: 10/3 = 3.33, 10/3 = 4.
    """
    steps = _scan(_normalise_text(text), "text")
    last = steps[-1].claimed_value if steps else None
    return StepReport(len(steps), sum(s.ok for s in steps), tuple(steps), last)


def _scan(text: str, source: str) -> list[StepDetail]:
    """Claims in one pass over the tokens; an annotation's inside is scanned the same way."""
    steps: list[StepDetail] = []
    run: list[list[_Token] | None] = [[]]  # segments between '='; None marks an overlong one
    skip_echo = False
    for match in _TOKEN.finditer(text):
        kind, token = match.lastgroup, (match.group(), match.start(), match.end())
        if kind == "space":
            continue
        if skip_echo:
            skip_echo = False
            if kind == "num":
                continue
        if kind == "ann":
            steps += _run_claims(run, text, source) + _scan(match.group()[2:-2], "annotation")
            run, skip_echo = [[]], True
        elif kind in ("word", "other"):
            steps += _run_claims(run, text, source)
            run = [[]]
        elif kind == "eq":
            run.append([])
        else:
            if _adjacent_operands(run[-1], token[0]):
                steps += _run_claims(run, text, source)
                run = [[]]
            _append(run, token)
    return steps + _run_claims(run, text, source)


def _adjacent_operands(segment: list[_Token] | None, token: str) -> bool:
    """Two operands in a row ("day 2 5 + 3") start a new claim rather than form one."""
    if not segment or not _is_number(token):
        return False
    last = segment[-1][0]
    return _is_number(last) or last == ")"


def _append(run: list[list[_Token] | None], token: _Token) -> None:
    segment = run[-1]
    if segment is not None:
        segment.append(token)
        if len(segment) > _MAX_SEGMENT_TOKENS:
            run[-1] = None  # too long to be a written step; also bounds memory


def _run_claims(run: list[list[_Token] | None], text: str, source: str) -> list[StepDetail]:
    if len(run) < 2:
        return []
    run = [_start(run[0], text), *run[1:-1], _end(run[-1], text)]
    sides = [_parse_side(segment, text) for segment in run]
    return [
        _judge(left, right, source)
        for left, right in zip(sides, sides[1:])
        if left is not None and right is not None and left.ops  # "Week 2 = 35 + 35" is a label
    ]


# How a run's edges are read: prose around arithmetic is either markup to skip (a bullet "- ",
# markdown "**", an unmatched parenthesis) or algebra that makes the edge side no arithmetic
# claim at all: "S + 143 = 200 - 16", "W/2 = 55", "D3 = 644", "8/3 = 24/Y", "30 + M trees",
# "100/5 = 5A/5". An operator is binary (so its other operand is a word) when it is followed by
# a space or directly preceded by a letter, digit or ')'.
_SIGNS = frozenset({"+", "-"})
_TRAILING_OPS = frozenset({"+", "-", "*", "/", "//", "^", "**", "("})


def _lone_letter(text: str, index: int) -> bool:
    """A one-letter word at `index`: a variable name such as the S of "2S" or the A of "5A"."""
    return (
        0 <= index < len(text)
        and text[index].isalpha()
        and not (index > 0 and text[index - 1].isalpha())
        and not (index + 1 < len(text) and text[index + 1].isalpha())
    )


def _line_start(text: str, index: int) -> bool:
    while index > 0 and text[index - 1] in " \t":
        index -= 1
    return index == 0 or text[index - 1] == "\n"


def _binary_at_start(text: str, start: int, end: int) -> bool:
    spaced_after = end < len(text) and text[end].isspace()
    return spaced_after or (start > 0 and (text[start - 1].isalnum() or text[start - 1] == ")"))


def _count(segment: list[_Token], token: str) -> int:
    return sum(t == token for t, _, _ in segment)


def _start(segment: list[_Token] | None, text: str) -> list[_Token] | None:
    """The first side of a run without leading markup; None when it begins mid-expression."""
    if not segment:
        return segment
    excess = _count(segment, "(") - _count(segment, ")")
    for index, (token, start, end) in enumerate(segment):
        if token in ("x", "X", ")") or _lone_letter(text, start - 1):
            return None
        line_start = _line_start(text, start)
        binary = not line_start and _binary_at_start(text, start, end)
        if token == "(" and excess > 0:
            excess -= 1
        elif token in _SIGNS:
            if binary:
                return None
            if not (line_start and text[end : end + 1].isspace()):  # a sign, not a bullet
                return segment[index:]
        elif token in _BINARY_ONLY:
            if binary:
                return None
        else:
            return segment[index:]
    return []


def _end(segment: list[_Token] | None, text: str) -> list[_Token] | None:
    """The last side of a run without trailing markup; None when the expression runs on into
    words ("30 + M trees") or a variable ("5A")."""
    if not segment:
        return segment
    excess = _count(segment, ")") - _count(segment, "(")
    for index in range(len(segment) - 1, -1, -1):
        token, start, end = segment[index]
        if token in ("x", "X"):
            return None
        if _is_number(token):
            return None if _lone_letter(text, end) else segment[: index + 1]
        if token == ")" and excess > 0:
            excess -= 1
        elif token in _TRAILING_OPS:
            after = text[end : end + 1]
            if text[start - 1 : start].isspace() or after.isalnum() or after == "(":
                return None
        else:
            return segment[: index + 1]
    return []


def _parse_side(segment: list[_Token] | None, text: str) -> _Side | None:
    if not segment:
        return None
    tokens = [t for t, _, _ in segment]
    evaluator = _Evaluator(tokens)
    try:
        value = evaluator.evaluate()
    except _ParseError:
        return None
    places = _literal_places(tokens)
    head = None
    if places is None and _is_number(tokens[0]) and len(tokens) > 1:
        head = _parse_side(segment[:1], text)
    side_text = text[segment[0][1] : segment[-1][2]]
    return _Side(side_text, value, evaluator.ops, places, evaluator.error, head)


def _literal_places(tokens: list[str]) -> int | None:
    """Decimals shown by a bare number such as '3.33', '-2' or '33.3%' (as a fraction, 3 + 2);
    None for an expression or a fraction."""
    percent = tokens[-1] == "%"
    body = tokens[:-1] if percent else tokens
    if not body or not _is_number(body[-1]) or "/" in body[-1]:
        return None
    if any(t not in _SIGNS for t in body[:-1]):
        return None
    return len(body[-1].partition(".")[2]) + (2 if percent else 0)


def _judge(left: _Side, right: _Side, source: str) -> StepDetail:
    claimed = right
    ok = _agree(left, right)
    if not ok and right.head is not None and _agree(left, right.head):
        claimed, ok = right.head, True
    return StepDetail(
        expression=left.text,
        claimed=claimed.text,
        computed=_format_value(left.value) if left.value is not None else None,
        claimed_value=_format_value(claimed.value) if claimed.value is not None else None,
        ok=ok,
        source=source,
        error=left.error or right.error,
    )


def _agree(a: _Side, b: _Side) -> bool:
    if a.value is None or b.value is None:
        return False
    if abs(a.value - b.value) <= _REL_TOL * max(abs(a.value), abs(b.value)):
        return True
    return _rounds_to(a.value, b) or _rounds_to(b.value, a)


def _rounds_to(exact: Fraction, written: _Side) -> bool:
    """True when `written` is a bare number equal to `exact` rounded up or down at its decimals."""
    if written.places is None or written.value is None:
        return False
    scale = 10**written.places
    return written.value * scale in (math.floor(exact * scale), math.ceil(exact * scale))


# ---------------------------------------------------------------------------------------------
# Scoring and reports


def _normalise_gold(gold: str, task: str) -> str:
    gold = _normalise_text(gold).strip()
    if task == "aqua":
        return gold.upper()
    match = re.fullmatch(_SIGNED_NUM, gold)
    return _normalise_number(match.group(1), match.group(2)) if match else gold


def score_prediction(generation: str, gold_answer: str, task: str) -> dict:
    """Scores one generation: strict and flexible answers, and its step report.

    `answer_differs_from_last_step` flags a gsm8k answer that is not the value the chain's last
    claim states (an answer that does not follow from the written work); always False for aqua,
    whose letters cannot be compared with the chain's numbers.
    """
    _check_task(task)
    gold = _normalise_gold(gold_answer, task)
    strict = extract_answer(generation, task)
    flexible = extract_answer(generation, task, flexible=True)
    report = check_steps(generation)
    differs = (
        task == "gsm8k"
        and flexible is not None
        and report.last_value is not None
        and not answers_equal(flexible, report.last_value, task)
    )
    return {
        "gold": gold,
        "extracted": strict,
        "extracted_flexible": flexible,
        "correct": answers_equal(strict, gold, task),
        "correct_flexible": answers_equal(flexible, gold, task),
        "steps_total": report.total,
        "steps_valid": report.valid,
        "all_steps_valid": report.all_valid,
        "answer_differs_from_last_step": differs,
        "last_step_value": report.last_value,
        "steps": [dataclasses.asdict(step) for step in report.steps],
    }


def _share(count: int, total: int) -> float:
    return count / total if total else 0.0


def summarize(rows: Sequence[dict], task: str) -> dict:
    """Aggregates `score_prediction` rows (plus `maj_answer` when self-consistency ran).

    `chains_all_steps_valid` is the share of all n chains that make at least one claim and whose
    claims all hold; `correct_with_invalid_step` and `answer_differs_from_last_step` are counts.
    """
    _check_task(task)
    n = len(rows)

    def count(key: str) -> int:
        return sum(1 for row in rows if row.get(key))

    steps_total = sum(row["steps_total"] for row in rows)
    steps_valid = sum(row["steps_valid"] for row in rows)
    summary = {
        "task": task,
        "n": n,
        "accuracy": _share(count("correct"), n),
        "accuracy_flexible": _share(count("correct_flexible"), n),
        "correct": count("correct"),
        "correct_flexible": count("correct_flexible"),
        "steps_total": steps_total,
        "steps_valid": steps_valid,
        "step_validity": _share(steps_valid, steps_total),
        "chains_with_steps": sum(1 for row in rows if row["steps_total"] > 0),
        "chains_all_steps_valid": _share(count("all_steps_valid"), n),
        "chains_all_steps_valid_count": count("all_steps_valid"),
        "correct_with_invalid_step": sum(
            1 for row in rows if row.get("correct") and row["steps_valid"] < row["steps_total"]
        ),
        "answer_differs_from_last_step": count("answer_differs_from_last_step"),
    }
    if any("maj_answer" in row for row in rows):
        maj_correct = sum(
            answers_equal(row.get("maj_answer"), row.get("gold"), task) for row in rows
        )
        summary["maj_correct"] = maj_correct
        summary["maj_accuracy"] = _share(maj_correct, n)
    return summary


def format_table(summary: dict) -> str:
    """The summary as an aligned two-column console table."""
    width = max(len(key) for key in summary)
    lines = []
    for key, value in summary.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown:>10}")
    return "\n".join(lines)


def write_report(
    out_dir: str | pathlib.Path, rows: Iterable[dict], summary: dict
) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes `predictions.jsonl` (one line per question) and `summary.json` into `out_dir`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions, summary_path = out / "predictions.jsonl", out / "summary.json"
    with predictions.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary_text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    summary_path.write_text(summary_text, encoding="utf-8")
    return predictions, summary_path


def read_correct(path: str | pathlib.Path, field: str = "correct") -> dict[str, bool]:
    """{question id: whether it was answered correctly} from a run's predictions.jsonl."""
    from cotjax.records import RecordError, read_json_lines

    out: dict[str, bool] = {}
    for where, row in read_json_lines(path):
        if "id" not in row or not isinstance(row.get(field), bool):
            fields = sorted(k for k, v in row.items() if isinstance(v, bool))
            raise RecordError(f"{where}: a predictions row needs an 'id' and a boolean {field!r} "
                              f"(its boolean fields: {', '.join(fields) or 'none'})")
        if str(row["id"]) in out:
            raise RecordError(f"{where}: question id {row['id']!r} appears twice")
        out[str(row["id"])] = row[field]
    if not out:
        raise RecordError(f"{path}: no predictions")
    return out


def paired_comparison(a: dict[str, bool], b: dict[str, bool]) -> dict:
    """Two runs scored on the same questions: how many each alone got right, and the exact
    two-sided McNemar p-value (a binomial test on those discordant questions: the ones both
    runs got right, or both got wrong, say nothing about which run is better)."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ValueError(f"the runs scored different questions ({len(only)} not in both, "
                         f"e.g. {only[:3]}): compare runs on the same data (ids hold the data "
                         "path as given to --data)")
    only_a = sum(a[k] and not b[k] for k in a)
    only_b = sum(b[k] and not a[k] for k in a)
    both = sum(a[k] and b[k] for k in a)
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"n": len(a), "correct_a": only_a + both, "correct_b": only_b + both, "both": both,
            "only_a": only_a, "only_b": only_b, "neither": len(a) - both - n,
            "mcnemar_p": p}


# ---------------------------------------------------------------------------------------------
# `cotjax eval`: decode a checkpoint (or the base model) on a JSONL file and score it.
# Everything JAX-side is imported inside the functions, so the scoring above stays pure Python.

PROMPTING = ("finetuned", "zero_shot_cot", "few_shot_cot")


def _eval_settings(config) -> dict:
    """config.eval with the base defaults filled in (configs written before the section)."""
    defaults = _base_config().eval.to_dict()
    given = config.get("eval")
    return {**defaults, **(given.to_dict() if given is not None else {})}


def _base_config():
    try:
        from configs import base
    except ImportError:
        import sys

        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
        from configs import base
    return base.get_config()


def load_eval_records(data: str | None, task: str, config) -> tuple[list, str]:
    """(records, description): a raw GSM8K / AQuA-RAT JSONL file, or `validation` (the config's
    held-out slice of its data; its source must be the task's format)."""
    from cotjax import records as records_lib

    if data in (None, "", "validation"):
        recs, _ = records_lib.load_records(config.data, "validation")
        return recs, f"validation split of {config.data.get('path', config.data.source)}"
    if task == "gsm8k":
        def parse(raw, where):
            return records_lib.parse_gsm8k(raw, where,
                                           strip_calc=config.data.get("strip_calculator", True))
    else:
        parse = records_lib.parse_aqua
    recs, report = records_lib.parse_all(records_lib.read_json_lines(data), parse,
                                         config.data.get("on_bad_record", "error"))
    if report.skipped:
        print(f"{data}: skipped {report.skipped} bad records of {report.read}: "
              f"{'; '.join(report.skip_reasons)}")
    if not recs:
        raise ValueError(f"{data}: no records")
    return recs, data


def build_prompt(record, prompting: str, template: str, tokenizer=None, exemplars=(),
                 cot_cue: str = "Let's think step by step.") -> str:
    """The prompt text of one question under a prompting mode (see PROMPTING)."""
    from cotjax import formatting

    if prompting not in PROMPTING:
        raise ValueError(f"eval.prompting must be one of {PROMPTING}, got {prompting!r}")
    if prompting == "few_shot_cot":
        return formatting.format_prompt(record, template, tokenizer, fewshot=exemplars)
    prompt = formatting.format_prompt(record, template, tokenizer)
    if prompting == "zero_shot_cot":
        prompt += (" " if template == "plain" else "") + cot_cue
    return prompt


def prompt_ids(tokenizer, prompt: str, template: str) -> list[int]:
    """Token ids of a prompt exactly as training tokenizes it (BOS for plain, none for chat)."""
    from cotjax import tokenize

    bos = () if template == "chat" else tokenize.bos_ids(tokenizer)
    return list(bos) + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def eval_exemplars(config) -> tuple:
    """The few-shot exemplars of the config's eval prompting (none unless few_shot_cot)."""
    from cotjax import pipeline

    ev = _eval_settings(config)
    if ev["prompting"] != "few_shot_cot":
        return ()
    shots = config.copy_and_resolve_references()
    with shots.unlocked():
        shots.data.fewshot = int(ev["fewshot"])
    return pipeline.fewshot_exemplars(shots)


def eval_prompts(config, recs, tokenizer, exemplars=()) -> tuple[list[str], list[list[int]]]:
    """(prompt texts, prompt ids) of records under the config's eval prompting and template."""
    ev = _eval_settings(config)
    template = config.data.template
    prompts = [build_prompt(r, ev["prompting"], template, tokenizer, exemplars, ev["cot_cue"])
               for r in recs]
    return prompts, [prompt_ids(tokenizer, p, template) for p in prompts]


def decode_settings(config, model_cfg, tokenizer, mesh=None) -> dict:
    """generate_text keywords of the config's eval section: length, stop strings, batch, and
    EOS ids (the model's and the template's end-of-turn, so chat answers stop at their turn)."""
    from cotjax import tokenize

    ev = _eval_settings(config)
    eos = tokenize.eos_ids(tokenizer, config.data.template)
    return dict(max_new_tokens=int(ev["max_new_tokens"]), stop=tuple(ev["stop"]),
                eos_ids=tuple(dict.fromkeys([*model_cfg.eos_token_ids, *eos])),
                batch_size=int(ev["batch_size"]), mesh=mesh)


def answer_row(rec, ids: Sequence[int], completion, task: str) -> dict:
    """One predictions.jsonl row: the record, its greedy completion, and the scores."""
    return {"id": rec.id, "question": rec.question, "prompt_tokens": len(ids),
            "generation": completion.text, "finish": completion.finish,
            "new_tokens": len(completion.tokens),
            **score_prediction(completion.text, rec.answer, task)}


def greedy_answers(net, model_cfg, tokenizer, config, recs, *, task: str | None = None,
                   max_new_tokens: int | None = None, mesh=None) -> list[dict]:
    """Records answered greedily and scored exactly as `cotjax eval` does (its prompting,
    template, stops and EOS): one `answer_row` per record."""
    from cotjax import decode

    task = task or _eval_settings(config)["task"]
    _, ids = eval_prompts(config, recs, tokenizer, eval_exemplars(config))
    settings = decode_settings(config, model_cfg, tokenizer, mesh)
    if max_new_tokens is not None:
        settings["max_new_tokens"] = int(max_new_tokens)
    completions = decode.generate_text(net, tokenizer, ids, **settings)
    return [answer_row(r, i, c, task) for r, i, c in zip(recs, ids, completions, strict=True)]


def compare_answers(workdir, n: int = 4, models=(("base", "base"), ("fine-tuned", None)), *,
                    data: str | None = None, max_new_tokens: int | None = None,
                    mesh=None) -> list[dict]:
    """The first `n` eval questions of a run (default: its validation slice) answered by several
    of its models, side by side: one dict per question with `id`, `question`, `gold` and
    `answers` {label: answer_row}. `models` pairs a label with a step of `load_model_for_eval`
    ("base": the model the run started from; None: the latest checkpoint); `mesh`: where the
    models are placed and decoded (default: one device)."""
    from cotjax.checkpoint import load_model_for_eval, read_run_config

    config, _ = read_run_config(workdir)
    task = _eval_settings(config)["task"]
    recs, _ = load_eval_records(data, task, config)
    recs = recs[:n]
    out = [{"id": r.id, "question": r.question, "gold": _normalise_gold(r.answer, task),
            "answers": {}} for r in recs]
    for label, step in models:
        net, model_cfg, tokenizer, _ = load_model_for_eval(workdir, step, mesh=mesh)
        rows = greedy_answers(net, model_cfg, tokenizer, config, recs, task=task,
                              max_new_tokens=max_new_tokens, mesh=mesh)
        for question, row in zip(out, rows):
            question["answers"][label] = row
        del net  # one model in memory at a time
    return out


def _load_for_eval(config, workdir, step, mesh):
    """(model, model_cfg, tokenizer, description)."""
    if workdir:
        try:
            from cotjax.checkpoint import load_model_for_eval
        except ImportError as e:
            raise NotImplementedError(
                "evaluating a --workdir needs cotjax.checkpoint.load_model_for_eval") from e
        model, cfg, tokenizer, _ = load_model_for_eval(workdir, step, mesh=mesh)
        return model, cfg, tokenizer, f"{workdir} step {step if step is not None else 'latest'}"
    from cotjax import train

    model, cfg = train.load_base_model(config, mesh)
    return model, cfg, train.load_tokenizer_for(config), f"{config.model} (base)"


def _parse_step(step):
    if step in (None, "", "latest"):
        return None
    if step == "base" or isinstance(step, int):
        return step
    if str(step).isdigit():
        return int(step)
    raise ValueError(f"--step must be 'latest', 'base' or a number, got {step!r}")


def run_eval(config, workdir: str | None = None, step=None, *, task: str | None = None,
             data: str | None = None, out: str | None = None, model: str | None = None,
             progress: bool = True) -> dict:
    """Decode and score; writes predictions.jsonl and summary.json into `out`; returns summary.

    Model: the checkpoint in `workdir` (`step`: None/'latest', a number, or 'base'), else the
    config's base model (`model` overrides config.model). When the run's workdir is given and no
    config, the run's own config is used. `data`: a JSONL file in raw GSM8K or AQuA-RAT format,
    or 'validation' (default) for the config's held-out slice.
    """
    import time

    from tqdm import tqdm

    from cotjax import decode, sharding

    step = _parse_step(step)
    if config is None:
        if workdir:
            from cotjax.checkpoint import read_run_config

            config, _ = read_run_config(workdir)
        else:
            config = _base_config()
    config = config.copy_and_resolve_references() if hasattr(
        config, "copy_and_resolve_references") else config
    if model:
        with config.unlocked():
            config.model = model
    ev = _eval_settings(config)
    task = task or ev["task"]
    _check_task(task)
    prompting, template = ev["prompting"], config.data.template
    if out is None:
        if not workdir:
            raise ValueError("cotjax eval needs --out=DIR (or --workdir, to write under it)")
        out = str(pathlib.Path(workdir) / "eval" / f"step_{step if step is not None else 'latest'}")

    mesh = sharding.optional_mesh(config.mesh)
    net, model_cfg, tokenizer, source = _load_for_eval(config, workdir, step, mesh)
    recs, data_desc = load_eval_records(data, task, config)
    if ev["max_examples"] >= 0:
        recs = recs[:ev["max_examples"]]
    exemplars = eval_exemplars(config)
    _, ids = eval_prompts(config, recs, tokenizer, exemplars)
    common = decode_settings(config, model_cfg, tokenizer, mesh)

    def decode_all(prompt_ids_, desc, **kw):
        with tqdm(total=len(prompt_ids_), desc=desc, unit="seq", disable=not progress) as bar:
            t0 = time.perf_counter()
            outs = decode.generate_text(net, tokenizer, prompt_ids_, progress=bar.update,
                                        **common, **kw)
            return outs, time.perf_counter() - t0

    greedy, seconds = decode_all(ids, "greedy")
    rows = [answer_row(r, i, c, task) for r, i, c in zip(recs, ids, greedy, strict=True)]
    n_samples = int(ev["num_samples"])
    sample_seconds = 0.0
    if n_samples > 1:
        sampling = decode.SamplingConfig(float(ev["temperature"]), int(ev["top_k"]),
                                         float(ev["top_p"]))
        repeated = [i for i in ids for _ in range(n_samples)]
        chains, sample_seconds = decode_all(repeated, f"sampled x{n_samples}", sampling=sampling,
                                            seed=int(ev["seed"]))
        for q, row in enumerate(rows):
            mine = chains[q * n_samples:(q + 1) * n_samples]
            answers = [extract_answer(c.text, task, flexible=True) for c in mine]
            row["samples"] = [{"generation": c.text, "finish": c.finish, "extracted": a,
                               "correct": answers_equal(a, row["gold"], task)}
                              for c, a in zip(mine, answers)]
            row["maj_answer"] = majority_vote(answers, task)
            row["maj_correct"] = answers_equal(row["maj_answer"], row["gold"], task)
    summary = summarize(rows, task)
    new_tokens = sum(r["new_tokens"] for r in rows)
    summary.update({
        "prompting": prompting, "template": template, "model": source, "data": data_desc,
        "max_new_tokens": common["max_new_tokens"],
        "finished_eos": sum(r["finish"] == "eos" for r in rows),
        "finished_stop": sum(r["finish"] == "stop" for r in rows),
        "finished_length": sum(r["finish"] == "length" for r in rows),
        "decode_seconds": round(seconds, 2),
        "greedy_tokens_per_s": round(new_tokens / seconds, 1) if seconds else 0.0,
    })
    if prompting == "few_shot_cot":
        summary["fewshot"] = len(exemplars)
    if n_samples > 1:
        summary.update({
            "maj_n": n_samples, "temperature": float(ev["temperature"]),
            "sample_accuracy": _share(sum(s["correct"] for r in rows for s in r["samples"]),
                                      n_samples * len(rows)),
            "sample_decode_seconds": round(sample_seconds, 2)})
    write_report(out, rows, summary)
    print(format_table(summary))
    print(f"wrote {pathlib.Path(out) / 'predictions.jsonl'} and {pathlib.Path(out) / 'summary.json'}")
    return summary


def main(flags) -> None:
    """`cotjax eval [--config=PATH] [--workdir=DIR [--step=latest|N|base]] [--model=SPEC]
    [--task=gsm8k|aqua] [--data=FILE|validation] --out=DIR`."""
    run_eval(flags.config, flags.workdir, flags.step, task=flags.task, data=flags.data,
             out=flags.out, model=flags.model)
