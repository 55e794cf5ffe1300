"""Templates as text (pure Python; a tiny fake stands in for a chat tokenizer)."""

import pytest

from cotjax import formatting
from cotjax.formatting import Segments
from cotjax.records import CoTRecord

GSM = CoTRecord("How many?", "2 + 3 = 5 apples.\nSo 5 in all.", "5", id="g")
AQUA = CoTRecord("Pick one.", "It is 18.", "C", options=(("A", "9"), ("C", "18")), id="a")


class FakeChat:
    """apply_chat_template in the ChatML shape; `think` rewrites assistant turns like Qwen3's."""

    chat_template = "chatml"

    def __init__(self, think=False):
        self.think = think

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        def turn(m):
            think = "<think></think>" if self.think and m["role"] == "assistant" else ""
            return f"<s>{m['role']}\n{think}{m['content']}</s>\n"
        return "".join(map(turn, messages)) + ("<s>assistant\n" if add_generation_prompt else "")


def test_plain_cot():
    assert formatting.format_segments(GSM, "plain", "cot") == Segments(
        "Question: How many?\nAnswer:", " 2 + 3 = 5 apples.\nSo 5 in all.", "\nThe answer is 5.")


def test_plain_answer_only():
    assert formatting.format_segments(GSM, "plain", "answer_only") == Segments(
        "Question: How many?\nAnswer:", "", " The answer is 5.")


def test_plain_multiple_choice_shows_options_and_option_text():
    seg = formatting.format_segments(AQUA, "plain", "cot")
    assert seg.prompt == "Question: Pick one.\nOptions:\nA) 9\nC) 18\nAnswer:"
    assert seg.answer == "\nThe answer is C) 18."


def test_cot_without_chain_falls_back_to_answer():
    rec = CoTRecord("Q", "", "7")
    assert formatting.format_segments(rec, "plain", "cot") == formatting.format_segments(
        rec, "plain", "answer_only")


def test_plain_fewshot_prompt():
    prompt = formatting.format_prompt(GSM, "plain", None, fewshot=[AQUA])
    assert prompt == ("Question: Pick one.\nOptions:\nA) 9\nC) 18\nAnswer: It is 18.\n"
                      "The answer is C) 18.\n\nQuestion: How many?\nAnswer:")
    assert formatting.format_prompt(GSM, "plain", None) == "Question: How many?\nAnswer:"


def test_chat_segments_start_at_assistant_content():
    tok = FakeChat()
    seg = formatting.format_segments(GSM, "chat", "cot", tok)
    assert seg.prompt == "<s>user\nHow many?</s>\n<s>assistant\n"
    assert (seg.chain, seg.answer) == ("2 + 3 = 5 apples.\nSo 5 in all.", "\nThe answer is 5.")
    assert formatting.format_segments(GSM, "chat", "answer_only", tok).answer == "The answer is 5."


def test_chat_fewshot_is_earlier_turns():
    prompt = formatting.format_prompt(GSM, "chat", FakeChat(), fewshot=[AQUA], mode="answer_only")
    assert prompt == ("<s>user\nPick one.\nOptions:\nA) 9\nC) 18</s>\n<s>assistant\n"
                      "The answer is C) 18.</s>\n<s>user\nHow many?</s>\n<s>assistant\n")


def test_chat_template_that_rewrites_content_is_refused():
    with pytest.raises(ValueError, match="use template 'plain'"):
        formatting.format_segments(GSM, "chat", "cot", FakeChat(think=True))


def test_chat_needs_a_template():
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        formatting.format_prompt(GSM, "chat", None)


def test_bad_template_mode_and_empty_answer():
    with pytest.raises(ValueError, match="template must be one of"):
        formatting.format_prompt(GSM, "alpaca", None)
    with pytest.raises(ValueError, match="mode must be one of"):
        formatting.format_segments(GSM, "plain", "chain_only")
    with pytest.raises(ValueError, match="zero-length target"):
        formatting.format_segments(CoTRecord("Q", "c", " "), "plain", "cot")


def test_select_fewshot_is_seeded():
    pool = [CoTRecord(f"q{i}", "c", str(i)) for i in range(50)]
    a = formatting.select_fewshot(pool, 4, seed=1)
    assert a == formatting.select_fewshot(pool, 4, seed=1) and len(set(a)) == 4
    assert a != formatting.select_fewshot(pool, 4, seed=2)
    with pytest.raises(ValueError, match="cannot draw 51"):
        formatting.select_fewshot(pool, 51, seed=0)
