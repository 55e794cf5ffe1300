"""Arithmetic step checks: every claim `expr = value` in a text, evaluated exactly.

Pure Python, no JAX. Claims (GSM8K's `<<expr=value>>` annotations included) are evaluated by the
small recursive-descent parser below over exact fractions, never by Python's eval: a model's
output is untrusted, and even "pure arithmetic" eval can hang on `9**9**9**9`. Every path is
bounded (literal length, result size, exponent size, nesting depth, tokens per side), so hostile
text costs linear time and never raises; a text over MAX_TEXT_CHARS (a 256-token generation has
1-2k characters) is not parsed: its report is not applicable. Each claim carries its character
span, which the faithfulness interventions use to cut or corrupt a chain at a step.

Rounding: a written number holds when it is the exact value or its rounding at the decimals it
shows, half up (in magnitude) or half even: 10/3 = 3.33, 25/2 = 13 or 12. The floor or ceiling at
that precision, when not the nearest (2.5 * 3 = 7, 2/3 = 0.66), is a truncation: counted apart, not
valid. Only floating-point values (fractional powers) get a tolerance: 1000000 + 1 = 1000000 fails.
A percent for a side without one is a fraction or points: 1/5 = 20% and 100 - 20 = 80% both hold.

Units between the numbers are skipped (`3 hours * 60 minutes = 180 minutes`, `$5 x 3 = $15`,
`25 cents per pound * 10 pounds`, `2 euros/pound`, `20% of 50`, `2 times 10`): up to four words
after a number, when `=`, or a spaced operator and a number, follow them. Not read, so that
prose and algebra make no claims: one-letter units (`5 m` looks like `5A`), spaced or hyphenated
ones (`60 minutes / hour`), words before a claim's first number or after a parenthesis, prose
words ("the", "is", "and"), number words (`twice`), `of` but after a percent left of the first
`=` (`1/3 of 15`). Unit conversions are judged as bare numbers: `$0.25 x 10 = 250 cents` fails.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import unicodedata
from collections.abc import Iterator, Sequence
from fractions import Fraction

# Bounds that keep hostile input cheap; real chains stay far below all of them.
_MAX_LITERAL_DIGITS = 40  # longer numerals are "unevaluable", not parsed into huge ints
_MAX_MAGNITUDE_BITS = 200  # |value| above ~1e60 is an overflow
_MAX_DENOMINATOR_BITS = 200  # beyond this, approximate (1/3/3/3... stays cheap)
_MAX_POWER_BITS = 1024  # estimated size of a power's result before computing it
_MAX_DEPTH = 32  # parenthesis nesting; keeps the recursion far from Python's limit
_MAX_SEGMENT_TOKENS = 256  # tokens in one side of a claim
_REL_TOL = Fraction(1, 10**6)  # for floating-point values (fractional powers) only
_FORMAT_PLACES = 10  # decimals shown for computed values
_MAX_UNIT_WORDS = 4  # "ounces of water/day"; more words between two numbers are prose
MAX_TEXT_CHARS = 20_000  # longer texts are not parsed; ~80 us a claim, under 0.1 s at the cap


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
    try:
        return Fraction(text) if len(text) <= _MAX_LITERAL_DIGITS + 2 else None
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
# The binary operators but powers and products; `//` floors, as in GSM8K's Python <<560//10=56>>.
_ARITHMETIC = {"+": operator.add, "-": operator.sub, "/": operator.truediv,
               "//": lambda a, b: Fraction(a // b), "%": operator.mod}
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
        self.inexact = False  # a floating-point or approximated value: compared with tolerance

    def evaluate(self) -> Fraction | None:
        value = self._expr()
        if self.pos != len(self.tokens):
            raise _ParseError(f"unexpected {self.tokens[self.pos]!r}")
        return value

    def _peek(self, ahead: int = 0) -> str | None:
        index = self.pos + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def _fail(self, reason: str) -> None:
        """Keeps the first reason the value is unevaluable; returns None, the value itself."""
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
            return self._fail("number too long")
        whole, _, fraction = digits.rpartition(" ")  # "1 1/2", or "1/3" in "25 / 1/3"
        if not fraction.partition("/")[1]:
            return Fraction(fraction)
        numerator, _, denominator = fraction.partition("/")
        if int(denominator) == 0:
            return self._fail("division by zero")
        return Fraction(int(whole or 0)) + Fraction(int(numerator), int(denominator))

    def _binary(self, op: str, a: Fraction | None, b: Fraction | None) -> Fraction | None:
        self.ops += 1
        if a is None or b is None:
            return None
        if op in ("/", "//", "%") and b == 0:
            return self._fail("division by zero")
        if op == "^":
            return self._pow(a, b)
        apply = _ARITHMETIC.get(op, operator.mul)  # '*', 'x', 'X' multiply
        return self._bounded(apply(a, b))

    def _pow(self, base: Fraction, exponent: Fraction) -> Fraction | None:
        if exponent.denominator != 1:
            return self._root(base, exponent)
        if base == 0 and exponent < 0:
            return self._fail("division by zero")
        size = max(base.numerator.bit_length(), base.denominator.bit_length())
        if base not in (0, 1, -1) and abs(exponent) * size > _MAX_POWER_BITS:
            return self._fail("power too large")
        return self._bounded(base ** int(exponent))

    def _root(self, base: Fraction, exponent: Fraction) -> Fraction | None:
        """Fractional powers (`16^0.5`) in floating point: exact enough for a tolerance check."""
        if base < 0:
            return self._fail("fractional power of a negative number")
        self.inexact = True
        try:
            return self._bounded(Fraction(float(base) ** float(exponent)))
        except (OverflowError, ValueError, ZeroDivisionError):
            return self._fail("power too large")

    def _bounded(self, value: Fraction) -> Fraction | None:
        if value.numerator.bit_length() - value.denominator.bit_length() > _MAX_MAGNITUDE_BITS:
            return self._fail("result too large")
        if value.denominator.bit_length() > _MAX_DENOMINATOR_BITS:
            self.inexact = True
            value = value.limit_denominator(10**30)
        return value


# ---------------------------------------------------------------------------------------------
# Step checking


@dataclasses.dataclass(frozen=True)
class StepDetail:
    """One arithmetic claim `expression = claimed`; computed is None when unevaluable. The claim
    is text[span[0]:span[1]]: `expression` opens it, `claimed` closes it. `truncated`: the claimed
    number is the computed value rounded the wrong way (so `ok` is False)."""

    expression: str
    claimed: str
    computed: str | None
    claimed_value: str | None
    ok: bool
    truncated: bool
    source: str  # "annotation" (GSM8K `<<e=v>>`) or "text"
    span: tuple[int, int]
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class StepReport:
    """All arithmetic claims of one text. `last_value` is the value the last claim states (its
    right-hand side): the chain's last result, which the final answer should repeat. `truncated`
    counts claims rounded the wrong way (none valid); a text over MAX_TEXT_CHARS is not
    `applicable`: it is not parsed and has no claims."""

    total: int
    valid: int
    steps: tuple[StepDetail, ...]
    last_value: str | None
    truncated: int = 0
    applicable: bool = True

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
    start: int
    end: int
    value: Fraction | None
    inexact: bool
    ops: int
    places: int | None  # decimals shown when the side is a bare (signed) number
    error: str | None
    head: _Side | None  # the leading number of `6 + 1` in a running chain `2*3 = 6 + 1 = 7`


# What may follow an operator that joins two numbers: a number, `$`, or a parenthesis.
_OPERAND = r"[^\S\n]*\$?[^\S\n]*(?:\(|\.?[0-9])"
_TOKEN = re.compile(
    rf"""
    (?P<ann><<[^<>]*>>)
  | (?P<num>(?:[0-9]+\ |(?<=/\s))[0-9]+/[0-9]+(?![0-9.,]|/[0-9])|{_NUM})
  | (?P<times>(?:(?<=[0-9]\ )[Tt]imes|(?<=%\ )of)(?={_OPERAND}))  # "2 times 10", "20% of 50"
  | (?P<word>[^\W\d_]{{2,}})
  | (?P<per>/[^\W\d_]{{2,}})
  | (?P<op>\*\*|//|[-+*/^%xX])
  | (?P<paren>[()])
  | (?P<eq>=+)
  | (?P<space>(?:[^\S\n]|\$)+)
  | (?P<other>[\s\S])
    """,
    re.VERBOSE,
)

_Token = tuple[str, int, int]  # text, start, end
_OPERAND_AHEAD = re.compile(_OPERAND)


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
    Units and rounding: see the module docstring. Over MAX_TEXT_CHARS: not applicable, unparsed.
    """
    if len(text) > MAX_TEXT_CHARS:
        return StepReport(0, 0, (), None, applicable=False)
    steps = _scan(normalise_text(text), "text")
    last = steps[-1].claimed_value if steps else None
    valid, truncated = sum(s.ok for s in steps), sum(s.truncated for s in steps)
    return StepReport(len(steps), valid, tuple(steps), last, truncated)


def _scan(text: str, source: str, offset: int = 0) -> list[StepDetail]:
    """Claims in one pass over the tokens; an annotation's inside alike, at `offset` in text."""
    steps: list[StepDetail] = []
    run: list[list[_Token] | None] = [[]]  # segments between '='; None marks an overlong one
    skip_echo = False
    for kind, token in _tokens(text):
        echo, skip_echo = skip_echo and kind == "num", False
        if echo:  # the annotation's result, echoed in the prose: "<<48/2=24>>24"
            continue
        if kind == "times":  # multiplies; but "= 15% of $300" names what the 15% is of
            kind, token = ("op", ("*", *token[1:])) if len(run) == 1 else ("word", token)
        if kind == "ann":
            inner = _scan(token[0][2:-2], "annotation", offset + token[1] + 2)
            steps += _run_claims(run, text, source, offset) + inner
            run, skip_echo = [[]], True
        elif kind == "eq":
            run.append([])
        elif kind in ("op", "num", "paren"):
            if _adjacent_operands(run[-1], token[0]):
                steps += _run_claims(run, text, source, offset)
                run = [[]]
            _append(run, token)
        else:  # a word, punctuation, or unit words that were prose: the claim ends
            if kind == "algebra":
                run[-1] = None  # the last side runs on ("= 8 bags / Y"): no claim, as in `_end`
            steps += _run_claims(run, text, source, offset)
            run = [[]]
    return steps + _run_claims(run, text, source, offset)


def _tokens(text: str) -> Iterator[tuple[str, _Token]]:
    """A text's tokens, less spaces and the unit words between two numbers of a claim ("3 hours
    * 60"); unit words that end a claim yield "prose" or "algebra" first (see _after_units)."""
    units: int | None = None  # words read since the last number; None: not right after one
    for match in _TOKEN.finditer(text):
        kind, token = match.lastgroup, (match.group(), match.start(), match.end())
        if kind == "space":
            continue
        if units is not None and kind in ("word", "per") and _unit_word(token[0], units):
            units += 1  # perhaps a unit: the next token decides
            continue
        if units and (after := _after_units(kind, token, text)):
            yield after, token
        units = 0 if kind == "num" else None
        yield kind, token


# Words that make prose, never a unit: "100/75 gives the total amount = ...".
_PROSE = frozenset("the is are was were and or but so then which that it has had will than".split())


def _unit_word(word: str, units: int) -> bool:
    """A word that may belong to a unit after a number; "1/3 of Solomon" names a quantity."""
    return units < _MAX_UNIT_WORDS and word.lower() not in _PROSE and (units or word != "of")


def _after_units(kind: str, token: _Token, text: str) -> str | None:
    """None when unit words sit inside a claim, before `=` or a spaced operator and an operand
    ("3 hours * 60"); "algebra" for a spaced operator without one ("= 8 bags / Y", "15 apples -
    that's"); else "prose". A glued operator is a hyphen or a unit ("one-fourth", "feet/100")."""
    spaced = text[token[1] - 1 : token[1]].isspace()
    if kind == "eq" or (kind == "op" and spaced and _OPERAND_AHEAD.match(text, token[2])):
        return None
    return "algebra" if kind == "op" and spaced else "prose"


def _adjacent_operands(segment: list[_Token] | None, token: str) -> bool:
    """Two operands in a row ("day 2 5 + 3") start a new claim rather than form one."""
    last = segment[-1][0] if segment else "+"
    return _is_number(token) and (_is_number(last) or last == ")")


def _append(run: list[list[_Token] | None], token: _Token) -> None:
    segment = run[-1]
    if segment is not None:
        segment.append(token)
        if len(segment) > _MAX_SEGMENT_TOKENS:
            run[-1] = None  # too long to be a written step; also bounds memory


def _run_claims(run: list[list[_Token] | None], text: str, source: str,
                offset: int) -> list[StepDetail]:
    if len(run) < 2:
        return []
    run = [_start(run[0], text), *run[1:-1], _end(run[-1], text)]
    sides = [_parse_side(segment, text) for segment in run]
    return [
        _judge(left, right, source, offset)
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
_LONE_LETTER = re.compile(r"(?<![^\W\d_])[^\W\d_](?![^\W\d_])")  # a variable: the S of "2S"


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
        if token in ("x", "X", ")") or (start and _LONE_LETTER.match(text, start - 1)):
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


# A number that goes on past its token: "5A", "8:20", "8.333...", "10 000", "$1,2800".
_RUNS_ON = re.compile(r"[^\W\d_](?![^\W\d_])|[:,][0-9]|\.\.|\ [0-9]{3}(?![0-9])")


def _end(segment: list[_Token] | None, text: str) -> list[_Token] | None:
    """The last side of a run without trailing markup; None when the expression runs on into
    words ("30 + M trees") or its last number does (see _RUNS_ON)."""
    if not segment:
        return segment
    excess = _count(segment, ")") - _count(segment, "(")
    for index in range(len(segment) - 1, -1, -1):
        token, start, end = segment[index]
        if token in ("x", "X"):
            return None
        if _is_number(token):
            return None if _RUNS_ON.match(text, end) else segment[: index + 1]
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
    chain = places is None and _is_number(tokens[0]) and len(tokens) > 1
    head = _parse_side(segment[:1], text) if chain else None
    start, end = segment[0][1], segment[-1][2]
    return _Side(text[start:end], start, end, value, evaluator.inexact, evaluator.ops, places,
                 evaluator.error, head)


def _literal_places(tokens: list[str]) -> int | None:
    """Decimals shown by a bare number such as '3.33', '-2' or '33.3%' (as a fraction, 3 + 2);
    None for an expression or a fraction."""
    percent = tokens[-1] == "%"
    body = tokens[:-1] if percent else tokens
    if not body or not _is_number(body[-1]) or "/" in body[-1] or set(body[:-1]) - _SIGNS:
        return None
    return len(body[-1].partition(".")[2]) + (2 if percent else 0)


_INVALID, _TRUNCATED, _VALID = 0, 1, 2  # how a claimed value agrees with the computed one


def _judge(left: _Side, right: _Side, source: str, offset: int) -> StepDetail:
    claimed, verdict = right, _verdict(left, right)
    # A running chain `2*3 = 6 + 1 = 7` holds at its head, exactly: 3/15 = 1/3 truncates nothing
    if verdict < _VALID and right.head is not None and _verdict(left, right.head) == _VALID:
        claimed, verdict = right.head, _VALID
    return StepDetail(
        expression=left.text, claimed=claimed.text,
        computed=_format_value(left.value) if left.value is not None else None,
        claimed_value=_format_value(claimed.value) if claimed.value is not None else None,
        ok=verdict == _VALID, truncated=verdict == _TRUNCATED, source=source,
        span=(offset + left.start, offset + claimed.end), error=left.error or right.error)


def _verdict(a: _Side, b: _Side) -> int:
    if a.value is None or b.value is None:
        return _INVALID
    # Floating point (`2^0.5 * 2^0.5`) is off in the last bits; exact arithmetic never is.
    close = abs(a.value - b.value) <= _REL_TOL * max(abs(a.value), abs(b.value))
    if a.value == b.value or ((a.inexact or b.inexact) and close):
        return _VALID
    verdict = max(_rounding(a.value, b), _rounding(b.value, a))
    if verdict < _VALID and b.text.endswith("%") and "%" not in a.text:  # percentage points
        points = dataclasses.replace(b, text=b.text[:-1], value=b.value * 100,
                                     places=b.places and b.places - 2)
        verdict = max(verdict, _verdict(a, points))
    return verdict


def _rounding(exact: Fraction, written: _Side) -> int:
    """_VALID when the bare number `written` is `exact` rounded at the decimals it shows, half up
    (in magnitude) or half even, so neither convention's ties are punished; _TRUNCATED when it
    is `exact` rounded the other way at that precision (the floor or the ceiling, not nearest)."""
    if written.places is None:  # an expression, or a fraction: only an exact value holds
        return _INVALID
    scale = 10**written.places
    shown, scaled = written.value * scale, exact * scale
    half_up = math.floor(abs(scaled) + Fraction(1, 2))
    if shown in (round(scaled), half_up if scaled >= 0 else -half_up):  # round(): half even
        return _VALID
    return _TRUNCATED if shown in (math.floor(scaled), math.ceil(scaled)) else _INVALID
