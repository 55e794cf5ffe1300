"""A calculator in the decoding loop: when a chain ends an arithmetic expression with `=`, the
true value is written for the model (Cobbe et al. 2021 sampled GSM8K solutions this way).

What counts as a claim is exactly what the step checker (cotjax.steps) counts: the text's last
line plus a probe value is checked, and the hook fires only when the checker sees a claim whose
value is the probe, at the very end, with an expression it can evaluate. So plain claims
(`20 - 13 =`), running chains (`2 * 3 = 6 + 1 =`) and GSM8K annotations (`<<20-13=`) fire; labels
(`Week 2 =`), algebra (`x + 2 =`), times (`3:45 =`), and dates or phone numbers written as
digit groups joined by hyphens (`2024-01-15 =`, `555-1234 =`) do not; and an expression the
safe parser refuses or cannot evaluate (`9^9^9^9 =`, division by zero) leaves the model to
continue unaided. The parser's limits (text length, tokens per side, power sizes) apply, so no
expression can make the hook hang. For a run trained with the annotations kept
(`data.strip_calculator=false`: `48/2 = <<48/2=24>>24`) only the annotations fire: at the plain
`=` such a model opens its own annotation, which a forced value would cut off.

Values are written as GSM8K writes them: integers plain, other values rounded half up to two
decimals (`1/3 =` -> `0.33`, which the checker accepts as rounding), a `$` when the expression
carries one, after one space in prose and none inside an annotation; after `=$` (one token in
Gemma's vocabulary: `50*2=$`) the digits alone, the model having written the sign.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from cotjax.steps import check_steps, to_fraction

# Dates and phone numbers, not differences: 2024-01-15, 01-15-2024, 555-1234, 555-123-4567.
# Narrow on purpose: GSM8K writes differences the same way (115-10=105, 162-152=10).
_IDENTIFIER = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}-\d{1,2}-\d{4}|\d{3}-(?:\d{3}-)?\d{4}")
_CURRENCY_AFTER_EQUALS = re.compile(r"= *\$$")
# Where a claim can end: '=' last (before spaces), or '=' and a currency sign (Gemma's `=$` token).
_TRIGGER = re.compile(r"= *\$?$")


@dataclasses.dataclass(frozen=True)
class Call:
    expression: str
    value: str  # as written into the text (without the leading space or `$`)
    insert: str  # the text the model is given


def format_value(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    rounded = Decimal(value.numerator) / Decimal(value.denominator)
    text = str(rounded.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    return text.rstrip("0").rstrip(".") if "." in text else text


def claim_value(text: str, annotations_only: bool = False) -> Call | None:
    """The value the claim that `text` ends with must state; None when the text does not end an
    evaluable arithmetic claim's left side with `=` (see the module docstring), or, with
    `annotations_only` (a model trained on GSM8K's annotations: `48/2 = <<48/2=24>>24`), when
    the `=` is not inside a `<<...` annotation (there the model opens its own annotation next)."""
    body = text.rstrip(" ")
    written = text[len(body):]  # what the model wrote after the '=' already: spaces, a `$`
    if _CURRENCY_AFTER_EQUALS.search(body):  # Gemma writes `=$` as one token: `50*2=$`
        cut = body[:-1].rstrip(" ")
        body, written = cut, text[len(cut):]
    if not body.endswith("="):
        return None
    line = body[body.rfind("\n") + 1:]
    annotation = re.search(r"<<[^<>\n]*=$", line) is not None
    if annotations_only and not annotation:
        return None
    probe = "0>>" if annotation else " 0"
    report = check_steps(line + probe)
    if not report.applicable or not report.steps:
        return None
    last = report.steps[-1]
    if last.span[1] != len(line) + probe.index("0") + 1 or last.computed is None:
        return None
    expression = last.expression.strip()
    if _IDENTIFIER.fullmatch(expression):
        return None
    value = to_fraction(last.computed)
    if value is None:
        return None
    shown = format_value(value)
    if "$" in written:
        return Call(expression, shown, shown)
    dollar = "$" if "$" in expression and not annotation else ""
    space = "" if annotation or written else " "
    return Call(expression, shown, f"{space}{dollar}{shown}")


@functools.lru_cache(maxsize=4)  # one vocabulary pass per tokenizer (eval's greedy + maj@k)
def token_classes(tokenizer, vocab_size: int | None = None) -> dict[str, list[int]]:
    """Token ids by role, from each token's text: `trigger` ends with '=' or '=$' (before
    trailing spaces: where a claim can end); `extends` would continue a number written before it
    (starts with a digit, or with '.' or ',' and a digit); `separator` is a bare '.' or ',';
    `digit` starts with a digit. The engine uses the last three to keep a forced value whole."""
    n = vocab_size or len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=True)
    out = {"trigger": [], "extends": [], "separator": [], "digit": []}
    for i, t in enumerate(texts):
        if _TRIGGER.search(t.rstrip(" ")):
            out["trigger"].append(i)
        if t[:1].isdigit() or re.match(r"[.,][0-9]", t):
            out["extends"].append(i)
        if t in (".", ","):
            out["separator"].append(i)
        if t[:1].isdigit():
            out["digit"].append(i)
    return out


class Hook:
    """The engine's calculator hook: (problem, tokens so far) -> (ids to force, note) or None.
    `calls` and `declined` count what it did (declined: a trigger that was no claim)."""

    def __init__(self, tokenizer, text_of: Callable[[Sequence[int]], str], max_tokens: int = 16,
                 annotations_only: bool = False):
        self.tokenizer, self.text_of, self.max_tokens = tokenizer, text_of, max_tokens
        self.annotations_only = annotations_only
        self.calls = self.declined = 0
        self._ids: dict[str, tuple[int, ...]] = {}  # inserts repeat (" 24", " $10"): encode once

    def __call__(self, problem: int, tokens: Sequence[int]):
        call = claim_value(self.text_of(tokens), self.annotations_only)
        if call is None:
            self.declined += 1
            return None
        if call.insert not in self._ids:
            self._ids[call.insert] = tuple(
                self.tokenizer(call.insert, add_special_tokens=False)["input_ids"])
        ids = list(self._ids[call.insert])
        if not ids or len(ids) > self.max_tokens:
            self.declined += 1
            return None
        self.calls += 1
        return ids, {"expression": call.expression, "value": call.value, "insert": call.insert}

    def describe(self, sample) -> list[dict]:
        """A sample's calls as prediction fields: the expression, what was inserted, and what
        the model itself would have written there (its argmax, teacher-forced)."""
        out = []
        for c in sample.interventions:
            model_text = self.tokenizer.decode(c["model"], skip_special_tokens=True)
            out.append({"at_token": c["at"], "expression": c["expression"], "value": c["value"],
                        "inserted": c["insert"], "model_wrote": model_text,
                        "changed": c["model"] != c["forced"]})
        return out
