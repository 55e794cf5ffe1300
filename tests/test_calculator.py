"""The calculator hook: it fires exactly at claim ends (never inside a number, a date, a time or
a phone number), forces the right tokens for both tokenizers, stays bounded on hostile
expressions, and in `cotjax eval` leaves every claim it wrote valid."""

import json
import time

import pytest
from hypothesis import given, settings, strategies as st

from cotjax import calculator, weights
from cotjax.calculator import claim_value
from cotjax.steps import check_steps


@pytest.mark.parametrize("text, insert", [
    ("She bought 20 - 13 =", " 7"),
    ("She bought 20 - 13 = ", "7"),  # the model already wrote the space
    ("Natalia sold 48/2 = <<48/2=", "24"),  # GSM8K annotation: no space
    ("The meal cost 5 x $3 =", " $15"),
    ("Each gets 1/3 =", " 0.33"),
    ("2 * 3 = 6 + 1 =", " 7"),  # a running chain: the last side
    ("He ran (4+5)*2 =", " 18"),
    ("It is 12.5 * 2 =", " 25"),
    ("first\n3 + 4 =", " 7"),
    # differences written as GSM8K writes them are claims, not dates or phone numbers
    ("The coupon cost 115-10=", " 105"), ("Tom has 162-152=", " 10"),
    ("the display tank is 867-867 =", " 0"), ("It took 2024-2020 =", " 4"),
    # the model already wrote the currency sign (Gemma's `=$` token): the digits alone
    ("The gold cost 50*2=$", "100"), ("It is $20-$2=$", "18"), ("It is 20 - 2 = $", "18"),
])
def test_fires_at_claim_ends_with_the_value_as_the_data_writes_it(text, insert):
    call = claim_value(text)
    assert call is not None and call.insert == insert
    claim = check_steps(text + call.insert + (">>" if "<<" in text else ""))
    assert claim.steps[-1].ok  # what it writes is a valid claim by the checker's own rules


@pytest.mark.parametrize("text", [
    "She bought 20 - 13", "20 - 13 = 7", "The answer is 7.",  # no '=' at the end
    "On 2024-01-15 =", "On 01-15-2024 =", "Call 555-1234 =", "Call 555-123-4567 =",  # dates, phones
    "It starts at 3:45 =", "Week 2 =", "Let x + 2 =", "x = y =",  # times, labels, algebra
    "Then 5/0 =", "So 9^9^9^9 =", "The 10,000 =",  # unevaluable, no operator
])
def test_does_not_fire_elsewhere(text):
    assert claim_value(text) is None


def test_a_model_trained_with_annotations_gets_values_only_inside_them():
    """`data.strip_calculator=false` runs write `48/2 = <<48/2=24>>24`: the plain `=` is where
    such a model opens its own annotation, so with `annotations_only` only `<<48/2=` fires."""
    assert claim_value("Natalia sold 48/2 =", annotations_only=True) is None
    assert claim_value("Natalia sold 48/2 = <<48/2=", annotations_only=True).insert == "24"
    assert claim_value("Natalia sold 48/2 =").insert == " 24"  # the default: both kinds


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="0123456789+-*/^()=.,:$ x\n<>", max_size=60))
def test_never_fires_inside_a_number_and_always_writes_a_valid_claim(text):
    call = claim_value(text)
    if call is None:
        return
    assert text.rstrip(" ").endswith("=")  # never inside a number: only right after '='
    closing = ">>" if call.insert and "<<" in text.rsplit("\n", 1)[-1] else ""
    assert check_steps(text + call.insert + closing).steps[-1].ok


def test_hostile_expressions_return_quickly():
    hostile = ["9" * 5000 + " * 9 =", "(" * 3000 + "1" + ")" * 3000 + " + 1 =",
               "2^" * 2000 + "2 =", "1+" * 9000 + "1 =", "9**9**9**9**9 =",
               "1/" * 3000 + "3 ="]
    for text in hostile:
        t0 = time.perf_counter()
        claim_value(text)
        assert time.perf_counter() - t0 < 2.0, text[:40]


@pytest.mark.slow
@pytest.mark.one_device  # beside the other Gemma tests, which share its cached tokenizer
@pytest.mark.parametrize("spec", ["smollm2-135m-instruct", "gemma3-270m"])
def test_forces_the_right_tokens_for_both_tokenizers(spec):
    tok = weights.load_tokenizer(spec)
    triggers = calculator.token_classes(tok)["trigger"]
    assert tok.convert_tokens_to_ids("=") in triggers
    assert all(tok.decode([i]).rstrip(" ").rstrip("$").rstrip(" ").endswith("=")
               for i in triggers)
    hook = calculator.Hook(tok, lambda ids: tok.decode(ids, skip_special_tokens=True))
    for text, want in [("She bought 20 - 13 =", "She bought 20 - 13 = 7"),
                       ("It costs 5 x $3 =", "It costs 5 x $3 = $15"),
                       ("so 48/2 = <<48/2=", "so 48/2 = <<48/2=24")]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids[-1] in triggers  # the text ends with a trigger token in this tokenizer
        forced, note = hook(0, ids)
        assert tok.decode(ids + forced) == want and note["expression"]
    assert hook(0, tok("Week 2 =", add_special_tokens=False)["input_ids"]) is None
    assert (hook.calls, hook.declined) == (3, 1)
    # `=$` is one token in Gemma's vocabulary (its chains write `50*2=$100`): it must trigger,
    # and the value follow the sign; SmolLM2 writes '=' then '$', so it has fired at the '='.
    ids = tok("The gold cost 50*2=$", add_special_tokens=False)["input_ids"]
    assert (tok.decode(ids[-1:]) == "=$") == (spec == "gemma3-270m")
    if spec == "gemma3-270m":
        assert ids[-1] in triggers
        forced, _ = hook(0, ids)
        assert tok.decode(ids + forced) == "The gold cost 50*2=$100"


def test_the_hook_encodes_each_insert_once_and_hands_out_copies():
    """The insert's ids are cached per text (a sampling run writes " 24" many times): the same
    ids every time, from one tokenizer call, and a caller changing them changes no later call."""
    asked = []

    def tokenizer(text, add_special_tokens):
        asked.append(text)
        return {"input_ids": [ord(c) for c in text]}

    hook = calculator.Hook(tokenizer, lambda ids: "".join(map(chr, ids)))
    first, _ = hook(0, [ord(c) for c in "It is 20 + 4 ="])
    first.append(0)
    again, note = hook(1, [ord(c) for c in "Then 48 / 2 ="])
    assert again == [ord(c) for c in " 24"] and note["insert"] == " 24"
    assert asked == [" 24"] and hook.calls == 2


def test_calls_past_a_stop_cut_are_not_reported():
    """A row may run past its stop string before the engine looks; the calls it made there are
    not part of the kept text and are not reported."""
    from cotjax import decode, evaluate

    class Chars:
        def decode(self, ids, skip_special_tokens=True):
            return "".join(map(chr, ids))

    texts = decode.TextRule(Chars(), [0], ["\nQuestion:"])
    text = "2 + 2 = 4\nQuestion: 3 + 3 = 6"
    tokens = [ord(c) for c in text]
    done = texts.complete(tokens)
    calls = [{"at_token": text.index("= 4") + 1}, {"at_token": text.index("= 6") + 1}]
    assert done.finish == "stop" and done.text == "2 + 2 = 4"
    assert evaluate._kept_calls(calls, tokens, done, texts) == calls[:1]
    whole = texts.complete(tokens[:text.index("\n")])
    assert evaluate._kept_calls(calls[:1], tokens, whole, texts) == calls[:1]


@pytest.mark.one_device
@pytest.mark.slow
def test_eval_with_the_calculator_writes_valid_claims(tmp_path):
    """SmolLM2-135M-Instruct (base) on 6 GSM8K validation questions, greedy, calculator on:
    every claim the calculator completed is valid in the written chain."""
    from cotjax import defaults, evaluate

    config = defaults.load_config("configs/gsm8k.py")
    config.eval.max_examples = 6
    config.eval.max_new_tokens = 160
    config.eval.batch_size = 6
    config.eval.calculator = True
    summary = evaluate.run_eval(config, out=str(tmp_path), progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "predictions.jsonl")]
    calls = [c for r in rows for c in r["calculator_calls"]]
    assert summary["calculator_calls"] == len(calls) > 0
    for r in rows:
        for c in r["calculator_calls"]:
            assert c["inserted"].strip().lstrip("$") == c["value"]
            assert c["changed"] == (c["model_wrote"] != c["inserted"])
        # every claim whose value the calculator wrote holds
        written = [s for s in r["steps"] if any(
            s["expression"].strip() == c["expression"] for c in r["calculator_calls"])]
        assert all(s["ok"] for s in written), written


def test_the_calculator_format_follows_the_runs_training_data(tmp_path, capsys):
    """Evaluating a run trained with the annotations kept under a config that strips them (as
    `--config=configs/gsm8k.py --workdir=run` does) still fires only inside annotations."""
    from cotjax import checkpoint, defaults, evaluate

    run = defaults.get_config()
    run.data.strip_calculator = False
    (tmp_path / "config.json").write_text(run.to_json_best_effort())
    given = defaults.get_config()
    got = evaluate.resolve_config(given, str(tmp_path), None)
    assert got.data.strip_calculator is False and given.data.strip_calculator is True
    assert "data.strip_calculator=false as" in capsys.readouterr().out
    assert checkpoint.read_run_config(tmp_path)[0].data.strip_calculator is False
    # a model spec instead of the run: the given config decides, silently
    assert evaluate.resolve_config(given, str(tmp_path), "base").data.strip_calculator is True
    run.data.strip_calculator = True
    (tmp_path / "config.json").write_text(run.to_json_best_effort())
    assert evaluate.resolve_config(given, str(tmp_path), None).data.strip_calculator is True
    assert capsys.readouterr().out == ""
