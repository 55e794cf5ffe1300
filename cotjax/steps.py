"""Arithmetic step checks: every claim `expr = value` in a text, evaluated exactly.

Pure Python, no JAX. Step checking finds every arithmetic claim `expr = value` in a text (GSM8K's
`<<expr=value>>` annotations included) and evaluates `expr` with the small recursive-descent
parser below over exact fractions. Python's eval is never used: a model's output is untrusted
text, and even "pure arithmetic" eval can hang on `9**9**9**9`. Every path is bounded (literal
length, result size, exponent size, nesting depth, tokens per expression) so hostile text costs
roughly linear time and memory and never raises. Each claim carries its character span in the
text, which the faithfulness interventions use to cut or corrupt a chain at a step.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Sequence
from fractions import Fraction

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


def normalise_text(text: str) -> str:
    """Maps unicode minus, times, divide and a spaced en dash to ASCII, digits ('٣') to 0-9."""
    text = text.translate(_SYMBOLS).replace(" \u2013 ", " - ")
    return _UNICODE_DIGIT.sub(lambda m: str(unicodedata.decimal(m.group(), "")), text)


_NUM = r"(?:[0-9]{1,3}(?:,[0-9]{3}(?![0-9]))+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
# A minus sign belongs to a number only when it does not join two words or numbers ("10-12").
SIGNED_NUM = rf"((?<![\w)])-)?\$?\s?({_NUM})"


def normalise_number(sign: str | None, digits: str) -> str:
    """'1,234.00' -> '1234', '.5' -> '0.5', '-0.0' -> '0'; string-only, so any length is cheap."""
    whole, _, frac = digits.replace(",", "").partition(".")
    text = (whole.lstrip("0") or "0") + ("." + frac.rstrip("0") if frac.rstrip("0") else "")
    return "-" + text if sign and text != "0" else text


def to_fraction(text: str) -> Fraction | None:
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
    steps = _scan(normalise_text(text), "text")
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


