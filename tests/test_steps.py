"""The arithmetic step checker (pure Python, no JAX): claims, rounding, hostile text."""

from __future__ import annotations

import ast
import json
import pathlib
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cotjax import scoring, steps
from cotjax.scoring import extract_answer, score_prediction
from cotjax.steps import MAX_TEXT_CHARS, check_steps
from cotjax.steps import normalise_text as normalise

GSM8K_TRAIN = pathlib.Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "train.jsonl"


# ---------------------------------------------------------------------------- step checks


def _claims(text: str) -> list[tuple[str, str, bool]]:
    return [(s.expression, s.claimed, s.ok) for s in check_steps(text).steps]


@pytest.mark.parametrize(
    "text, claims",
    [
        ("5 + 3 = 8", [("5 + 3", "8", True)]),
        ("5 + 3 = 9", [("5 + 3", "9", False)]),
        ("Then 12 x 4 = 48 cookies.", [("12 x 4", "48", True)]),
        ("2 × 3 = 6 and 8 ÷ 2 = 4", [("2 * 3", "6", True), ("8 / 2", "4", True)]),
        ("It costs $1,200 / 4 = $300 each", [("1,200 / 4", "300", True)]),
        ("3 - 5 = -2", [("3 - 5", "-2", True)]),
        ("2^3 = 8, 2**3 = 8", [("2^3", "8", True), ("2**3", "8", True)]),
        ("-2^2 = -4", [("-2^2", "-4", True)]),  # power binds tighter than the sign
        ("2^3^2 = 512", [("2^3^2", "512", True)]),  # right associative
        ("2^-1 = 0.5", [("2^-1", "0.5", True)]),
        ("(2 + 3) * 4 = 20", [("(2 + 3) * 4", "20", True)]),
        ("Day 4: 2(50+100+120)=540", [("2(50+100+120)", "540", True)]),
        ("20% * 50 = 10", [("20% * 50", "10", True)]),
        ("17 % 5 = 2", [("17 % 5", "2", True)]),
        ("1/3 = 33.3%", [("1/3", "33.3%", True)]),
        ("8 x 1 1/2 = 12", [("8 x 1 1/2", "12", True)]),
        ("he used 25 / 1/3 = 75 total", [("25 / 1/3", "75", True)]),
        ("560//10 = 56", [("560//10", "56", True)]),
        ("16^0.5 = 4", [("16^0.5", "4", True)]),
        ("0.1 + 0.2 = 0.3", [("0.1 + 0.2", "0.3", True)]),
        ("٣ + ٤ = ٧", [("3 + 4", "7", True)]),
    ],
)
def test_check_steps_claims(text, claims):
    assert _claims(text) == claims


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("10/3 = 3.33", "valid"),  # rounded at the shown precision
        ("2/3 = 0.67", "valid"),
        ("10/3 = 3.3333", "valid"),
        ("10/3 = 3", "valid"),
        ("1/7 = 0.14", "valid"),
        ("-10/3 = -3.33", "valid"),
        ("2/3 = 0.6666666667", "valid"),  # GSM8K's long decimals: rounded at 10 places
        ("7 / 2 = 3.5", "valid"),
        ("5 + 3 = 8.00", "valid"),
        ("7/2 = 4", "valid"),  # a tie, half up
        ("-7/2 = -4", "valid"),  # half up in magnitude
        ("25/2 = 13", "valid"),  # half up
        ("25/2 = 12", "valid"),  # half even: a tie is not punished either way...
        ("27/2 = 13", "truncated"),  # ...but half even of 13.5 is 14 too
        ("2.5 * 3 = 7", "truncated"),  # the floor of 7.5: rounded the wrong way
        ("2/3 = 0.66", "truncated"),
        ("10/3 = 3.34", "truncated"),  # the ceiling at two decimals
        ("10 / 3 = 4 buses", "truncated"),
        ("-10/3 = -3.34", "truncated"),
        ("-7/2 = -3", "truncated"),
        ("99/100 = 0", "truncated"),
        ("1/100 = 1", "truncated"),  # the ceiling at whole units is still the wrong way
        ("2/3 = 0.6666666", "truncated"),  # no tolerance turns a truncation valid
        ("10/3 = 3.35", "invalid"),
        ("10/3 = 5", "invalid"),
        ("5 + 3 = 8.5", "invalid"),  # an exact result admits no rounding
        ("1000000 + 1 = 1000000", "invalid"),  # nor a tolerance
        ("3/15 = 1/3", "invalid"),  # a fraction is exact: 1/3 is not 0.2 rounded
        # a percent claimed for a side without one: a fraction or percentage points, as GSM8K
        # writes both (`1/5 = 20%`, `100 - 20 = 80%`), each rounded at the places it shows
        ("1/5 = 20%", "valid"),
        ("100 - 20 = 80%", "valid"),
        ("(75/100)*100 = 75%", "valid"),
        ("200/3 = 66.7%", "valid"),
        ("2/3 = 66.7%", "valid"),
        ("200/3 = 66.6%", "truncated"),
        ("100 - 20 = 70%", "invalid"),
        ("1/5 = 25%", "invalid"),
        ("40% + 5 = 5.4%", "invalid"),  # a percent on the left: only the fraction reading
    ],
)
def test_rounding(text, verdict):
    report = check_steps(text)
    assert report.total == 1
    step = report.steps[0]
    assert (step.ok, step.truncated) == (verdict == "valid", verdict == "truncated")
    assert (report.valid, report.truncated) == (step.ok, step.truncated)


def test_truncations_are_counted_apart_from_valid_claims():
    report = check_steps("2.5 * 3 = 7, then 7 + 1 = 8, then 2/3 = 0.66 and 1 + 1 = 3")
    assert (report.total, report.valid, report.truncated) == (4, 1, 2)
    assert not report.all_valid


def test_only_floating_point_values_get_a_tolerance():
    assert check_steps("2^0.5 * 2^0.5 = 1 + 1").valid == 1  # 2.0000000000000004 in floats
    assert check_steps("16^0.5 = 4").valid == 1
    assert check_steps("1/3 + 1/3 + 1/3 = 0.999999999").valid == 0


def test_chains():
    assert _claims("3 * 4 = 12 = 12") == [("3 * 4", "12", True)]  # 12 = 12 claims nothing
    assert _claims("2 * 3 = 3 + 3 = 6") == [("2 * 3", "3 + 3", True), ("3 + 3", "6", True)]
    # A running chain: each step holds when the next side starts with the previous value.
    assert _claims("2 * 3 = 6 + 1 = 7") == [("2 * 3", "6", True), ("6 + 1", "7", True)]
    assert _claims("2 * 3 = 7 + 1 = 8") == [("2 * 3", "7 + 1", False), ("7 + 1", "8", True)]
    report = check_steps("5 + 3 = 8 - 2 = 6")
    assert (report.total, report.valid, report.last_value) == (2, 2, "6")


def test_gsm8k_annotations_count_once():
    text = (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
    )
    report = check_steps(text)
    assert (report.total, report.valid, report.last_value) == (2, 2, "72")
    assert [s.source for s in report.steps] == ["annotation", "annotation"]
    assert check_steps("He paid <<3*4=13>>13 dollars").valid == 0
    assert check_steps("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.").total == 1


@pytest.mark.parametrize(
    "text",
    [
        "Let x = 5",
        "2x = 10",
        "x+4=32-7",
        "26=5+3x",
        "S + 143 = 200 - 16",  # S + 143 is algebra, so 200 - 16 has nothing to equal
        "W/2 = 55",
        "D3 = 644",
        "8/3 = 24/Y",
        "3*30 = 30 + M trees",
        "100/5 = 5A/5",
        "Week 2 = 35 + 35",  # a label, not a claim
        "The year 2023 = now",
        "a = b = c",
        "5 apples = 5 apples",
        "",
    ],
)
def test_algebra_and_prose_are_not_arithmetic_claims(text):
    assert check_steps(text).steps == ()


@pytest.mark.parametrize(
    "text, claims",
    [
        ("3 hours * 60 minutes = 180 minutes", [("3 hours * 60", "180", True)]),
        ("$5 x 3 = $15", [("5 x 3", "15", True)]),
        ("25 cents per pound * 10 pounds = 250 cents", [("25 cents per pound * 10", "250", True)]),
        ("20% of 50 = 10", [("20% of 50", "10", True)]),
        ("so 40% of 240 = 0.4 * 240 = 120", [("40% of 240", "0.4 * 240", True),
                                             ("0.4 * 240", "120", False)]),
        ("42 pounds * 2 euros/pound = 84 euros", [("42 pounds * 2", "84", True)]),
        ("200 tomatoes * $1.50/tomato = $300", [("200 tomatoes * $1.50", "300", True)]),
        ("1 year * 5000 = 5000 years", [("1 year * 5000", "5000", True)]),
        ("60 turtles + 2 times 10 = 80", [("60 turtles + 2 times 10", "80", True)]),
        ("100 ounces of water / 12 ounces of water/day = 8 ounces",
         [("100 ounces of water / 12", "8", True)]),
        ("7/12 / 1/12/day = 7 days", [("7/12 / 1/12", "7", True)]),
        ("Grace mowed 63 hours * $6 = $388.", [("63 hours * $6", "388", False)]),
        ("11 snowflake stamps + 9 truck stamps = 19 stamps",
         [("11 snowflake stamps + 9", "19", False)]),
        ("5 apples + 3 apples = 8 apples and 2 * 5 = 10",
         [("5 apples + 3", "8", True), ("2 * 5", "10", True)]),
        ("10 + 5 = 15 apples - 3 = 12 apples",
         [("10 + 5", "15", True), ("15 apples - 3", "12", True)]),
        ("Shelly has 6 x 5 = 30 $5 bills.", [("6 x 5", "30", True)]),
        ("There are 3/ 1/4 = 12 one-fourth miles", [("3/ 1/4", "12", True)]),
        ("12. 2 students per computer = 2*16 = 32 students", [("2*16", "32", True)]),
        ("Juwan is 1/3 of Solomon = 66/3 = 22", [("66/3", "22", True)]),  # "of Solomon": prose
        ("(($45/$300)*100)% = 15% of $300", [("(($45/$300)*100)%", "15%", True)]),
    ],
)
def test_units_between_numbers(text, claims):
    assert _claims(text) == claims


@pytest.mark.parametrize(
    "text",
    [
        "He has 5 apples and 3 pears = 8 fruit",  # no operator on the left once "and" ends it
        "Answer: 1 gallon = 1200 cubic feet.",
        "4. 5 flowers = 5 flowers",
        "by 100/75 gives the total amount = (100/75)*$4500",  # "the": prose, not a unit
        "Peter rakes 3 bags / 15 minutes = 8 bags / Y.",  # runs on into algebra
        "he arrived at 6:00+18 hours = 00:00 on Tuesday",  # clock times
        "at 7:50 + 30 minutes = 8:20 a.m.",
        "100 boxes x 100 kg/box = 10 000 kg.",  # "10 000" is not 10
        "20 minutes / 240 minutes = 8.333...%, which rounds down to 8%",
        "150 minutes / 5 minutes/100 meters = 3 times",  # a unit with a number inside
        "6 bars * $2200 = $1,2800.",
        "Sedrich has 4+2x jelly beans = 7",
        "She did it 3 times a day = 21",
        "He ran 5 km/h * 2 h = 10 km",  # one-letter units are not read (see cotjax.steps)
    ],
)
def test_prose_with_units_makes_no_claim(text):
    assert check_steps(text).steps == ()


def test_claim_spans_point_into_the_text():
    text = "He paid 5 x $3 = $15; 2 × 3 = 6, and 48/2 = <<48/2=24>>24 clips in May."
    spans = [text[slice(*s.span)] for s in check_steps(text).steps]
    assert spans == ["5 x $3 = $15", "2 × 3 = 6", "48/2=24"]
    for step in check_steps(text).steps:
        start, end = step.span
        assert normalise(text)[start:].startswith(step.expression)
        assert normalise(text)[:end].endswith(step.claimed)


def test_markup_around_claims():
    text = "- 5 + 3 = 8\n* 2 * 4 = 8\n**6 / 2 = 3**\n(so 5*3 = 15)\nis -5 + 3 = -2"
    report = check_steps(text)
    assert (report.total, report.valid) == (5, 5)


@pytest.mark.parametrize(
    "text, error",
    [
        ("1/0 = 5", "division by zero"),
        ("5 % 0 = 1", "division by zero"),
        ("10^10^10 = 3", "power too large"),
        ("10**10**10**10 = 1", "power too large"),
        ("9**9**9**9 = 1", "power too large"),
        ("2^100000 = 1", "power too large"),
        ("99999999999999999999999999999999 ^ 5 = 1", "result too large"),
        ("1" * 60 + " + 1 = 2", "number too long"),
        ("(-8)^(1/3) = -2", "fractional power of a negative number"),
    ],
)
def test_unevaluable_claims_are_invalid(text, error):
    report = check_steps(text)
    assert (report.total, report.valid) == (1, 0)
    assert report.steps[0].computed is None
    assert report.steps[0].error == error


def test_deep_parentheses_do_not_recurse():
    deep = "(" * 5000 + "1" + ")" * 5000 + " = 1"
    assert check_steps(deep).total == 0  # too deep to be a written step
    shallow = "(" * 20 + "1 + 1" + ")" * 20 + " = 2"
    assert check_steps(shallow).valid == 1


def test_step_report_to_dict_is_json():
    report = check_steps("5 + 3 = 8, 7/2 = 3")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total"] == 2 and data["steps"][0]["computed"] == "8"
    assert (data["truncated"], data["applicable"], data["steps"][1]["truncated"]) == (1, True, True)
    assert data["steps"][0]["span"] == [0, 9]
    assert check_steps("5 + 3 = 8").all_valid and not check_steps("no steps").all_valid


def test_text_over_the_cap_is_not_applicable():
    claims = "3 hours * 60 minutes = 180 minutes. "
    at_cap = (claims * (MAX_TEXT_CHARS // len(claims) + 1))[:MAX_TEXT_CHARS]
    report = check_steps(at_cap)
    assert report.applicable and report.total == report.valid == at_cap.count("=")
    over = check_steps(at_cap + " ")
    assert not over.applicable and (over.total, over.valid, over.steps) == (0, 0, ())
    assert over.last_value is None and not over.all_valid
    assert MAX_TEXT_CHARS >= 10 * 2_000  # a 256-token generation has 1-2k characters


def test_real_gsm8k_annotations_check():
    lines = GSM8K_TRAIN.read_text().splitlines()[:200]
    total = valid = 0
    for line in lines:
        report = check_steps(json.loads(line)["answer"])
        annotations = [s for s in report.steps if s.source == "annotation"]
        total += len(annotations)
        valid += sum(s.ok for s in annotations)
    assert total > 400
    assert valid / total >= 0.95


def test_real_gsm8k_answers_score_as_correct():
    for line in GSM8K_TRAIN.read_text().splitlines()[:200]:
        answer = json.loads(line)["answer"]
        row = score_prediction(answer, answer.split("####")[-1], "gsm8k")
        assert row["correct"] and row["correct_flexible"]


# ------------------------------------------------------------------------------- hostility

# Pieces of arithmetic, annotations and answer phrases, so random text hits the parser's paths.
_HOSTILE_ALPHABET = st.sampled_from(
    list("0123456789+-*/^%()=.,$ xXSab\n<>#:–")
    + ["**", "//", "<<", ">>", "1 1/2", "/ ", "- ", "The answer is ", "####", "Answer: ", "(C)"]
    + [" hours ", " of ", " times ", "/day", " per ", " the ", "...", " 000"]
    + ["٣", "×", "−", "²", "9" * 30]
)


@settings(deadline=2000, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_HOSTILE_ALPHABET, max_size=300).map("".join))
def test_hostile_arithmetic_text_never_raises(text):
    report = check_steps(text)
    assert 0 <= report.valid <= report.total == len(report.steps)
    for task in scoring.TASKS:
        extract_answer(text, task)
        extract_answer(text, task, flexible=True)
        score_prediction(text, "5", task)


@settings(deadline=2000, max_examples=100)
@given(st.text(max_size=400))
def test_any_unicode_text_never_raises(text):
    check_steps(text)
    score_prediction(text, "7", "gsm8k")
    score_prediction(text, "C", "aqua")


@pytest.mark.parametrize(
    "text",
    [
        "answer" + " " * 100_000 + "z",
        "The answer is" + " " * 100_000 + "x",
        "1" * 100_000 + " = 1",
        "(" * 50_000 + "1" + ")" * 50_000 + " = 1",
        "<<" * 50_000,
        "=" * 100_000,
        "1+" * 50_000 + "1 = 5",
        "- " * 50_000 + "5 = 5",
        "*/" * 50_000 + "3 = 3",
        "2 x " * 25_000 + "= 2",
        "<<" + "1+" * 50_000 + "1=2>>",
        "#" * 100_000,
        "٣" * 50_000 + " + 1 = 2",
        "10^10^10 = 1. " * 2_000,
        "1 hours " * 20_000 + "= 1",
        "1 ab/cd * " * 20_000 + "1 = 1",
        "20% of " * 20_000 + "1 = 1",
        "2 times " * 20_000 + "2 = 4",
        "1 hours of water/day + " * 10_000 + "1 = 2",
    ],
)
def test_long_hostile_text_is_fast(text):
    start = time.perf_counter()
    assert not check_steps(text).applicable  # over the cap: not parsed at all
    check_steps(text[:MAX_TEXT_CHARS])  # at the cap: parsed, and still bounded
    extract_answer(text, "gsm8k", flexible=True)
    extract_answer(text, "aqua", flexible=True)
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize("module", [steps, scoring])
def test_checkers_never_use_eval_or_exec(module):
    source = pathlib.Path(module.__file__).read_text()
    assert not re.search(r"\b(eval|exec)\s*\(", source)
    builtins = {"eval", "exec", "compile", "__import__", "getattr"}
    methods = {"eval", "exec", "literal_eval"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            bad = func.id in builtins if isinstance(func, ast.Name) else func.attr in methods
            assert not bad, f"{module.__name__} line {node.lineno} calls {ast.unparse(func)}()"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names]
            modules.append(getattr(node, "module", None) or "")
            assert not {"ast", "builtins"} & {m.split(".")[0] for m in modules}
    # The scoring code is pure Python: only the `cotjax eval` runner imports JAX, lazily.
    top = [n for n in ast.parse(source).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top for a in n.names}
    names |= {(getattr(n, "module", None) or "").split(".")[0] for n in top}
    assert "jax" not in names
