"""Segment tokenization and loss weights, golden on the real SmolLM2 tokenizer."""

import json

import numpy as np
import pytest

from configs.base import get_config
from cotjax import formatting, records, tokenize
from cotjax.tokenize import EncodeSpec, TokenSegments
from cotjax.weights import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("smollm2-135m-instruct")


def _first(path, parse):
    with open(path) as f:
        return parse(json.loads(f.readline()), f"{path}:1")


GSM = _first("data/gsm8k/train.jsonl", records.parse_gsm8k)  # Natalia, 48/2 = 24 clips ...
AQUA = _first("data/aqua/format_sample.jsonl", records.parse_aqua)  # 27 pens at 3 for $2 ...

# Checked by decoding (see test_golden_decodes_to_the_formatted_text).
EOS = [2]  # <|im_end|>: SmolLM2-Instruct's eos_token and the chat template's end of turn
# "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging
# Face<|im_end|>\n<|im_start|>user\n"
CHAT_HEAD = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018,
             411, 407, 19712, 8182, 2, 198, 1, 4093, 198]
CHAT_TAIL = [2, 198, 1, 520, 9531, 198]  # "<|im_end|>\n<|im_start|>assistant\n"
QUESTION = [17872, 42]  # "Question:"
ANSWER_COLON = [198, 21350, 42]  # "\nAnswer:"
# " sold clips to 48 of her friends ... altogether in April and May?" (after "Natalia")
GSM_Q = [3459, 23026, 288, 216, 36, 40, 282, 874, 2428, 281, 4124, 28, 284, 965, 1041, 3459, 2745,
         347, 800, 23026, 281, 2405, 30, 1073, 800, 23026, 1250, 36366, 542, 5948, 13587, 281, 4124,
         284, 2405, 47]
# " sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
GSM_CHAIN = [3459, 216, 36, 40, 31, 34, 446, 216, 34, 36, 23026, 281, 2405, 30, 198, 62, 6927,
             542, 3459, 216, 36, 40, 27, 34, 36, 446, 216, 39, 34, 23026, 13587, 281, 4124, 284,
             2405, 30]
# " shop sells pens at 3 for $2. How many dollars do 27 pens cost?\nOptions:\nA) 9\nB) 12\n
# C) 18\nD) 27\nE) 54"
AQUA_Q = [6434, 26064, 24193, 418, 216, 35, 327, 1885, 34, 30, 1073, 800, 8358, 536, 216, 34, 39,
          24193, 1708, 47, 198, 23084, 42, 198, 49, 25, 216, 41, 198, 50, 25, 216, 33, 34, 198, 51,
          25, 216, 33, 40, 198, 52, 25, 216, 34, 39, 198, 53, 25, 216, 37, 36]
# "27 pens make 27 / 3 = 9 groups of 3 pens.\nEach group costs $2, so the cost is 9 * 2 = 18
# dollars."
AQUA_CHAIN = [34, 39, 24193, 919, 216, 34, 39, 2272, 216, 35, 446, 216, 41, 2119, 282, 216, 35,
              24193, 30, 198, 10313, 1528, 3499, 1885, 34, 28, 588, 260, 1708, 314, 216, 41, 1672,
              216, 34, 446, 216, 33, 40, 8358, 30]
GSM_ANSWER = [504, 2988, 314, 216, 39, 34, 30]  # "The answer is 72."
AQUA_ANSWER = [504, 2988, 314, 340, 25, 216, 33, 40, 30]  # "The answer is C) 18."
NL, SPACE, THE_SPACE = [198], [216], [378]  # "\n", " ", " The"

GOLDEN = {  # (record, template, mode) -> prompt, chain, answer, eos
    ("gsm8k", "plain", "cot"): (QUESTION + [36366, 542] + GSM_Q + ANSWER_COLON,
                                [36366, 542] + GSM_CHAIN, NL + GSM_ANSWER, EOS),
    ("gsm8k", "plain", "answer_only"): (QUESTION + [36366, 542] + GSM_Q + ANSWER_COLON, [],
                                        THE_SPACE + GSM_ANSWER[1:], EOS),
    ("gsm8k", "chat", "cot"): (CHAT_HEAD + [62, 6927, 542] + GSM_Q + CHAT_TAIL,
                               [62, 6927, 542] + GSM_CHAIN, NL + GSM_ANSWER, EOS),
    ("gsm8k", "chat", "answer_only"): (CHAT_HEAD + [62, 6927, 542] + GSM_Q + CHAT_TAIL, [],
                                       GSM_ANSWER, EOS),
    ("aqua", "plain", "cot"): (QUESTION + [330] + AQUA_Q + ANSWER_COLON,
                               SPACE + AQUA_CHAIN, NL + AQUA_ANSWER, EOS),
    ("aqua", "plain", "answer_only"): (QUESTION + [330] + AQUA_Q + ANSWER_COLON, [],
                                       THE_SPACE + AQUA_ANSWER[1:], EOS),
    ("aqua", "chat", "cot"): (CHAT_HEAD + [49] + AQUA_Q + CHAT_TAIL, AQUA_CHAIN,
                              NL + AQUA_ANSWER, EOS),
    ("aqua", "chat", "answer_only"): (CHAT_HEAD + [49] + AQUA_Q + CHAT_TAIL, [],
                                      AQUA_ANSWER, EOS),
}
RECORDS = {"gsm8k": GSM, "aqua": AQUA}


def _segments(tok, key):
    name, template, mode = key
    seg = formatting.format_segments(RECORDS[name], template, mode, tok)
    return seg, tokenize.tokenize_segments([seg], tok, template)[0]


@pytest.mark.parametrize("key", GOLDEN, ids="-".join)
def test_golden_segments(tok, key):
    _, got = _segments(tok, key)
    assert got == TokenSegments(*map(tuple, GOLDEN[key]))


@pytest.mark.parametrize("key", GOLDEN, ids="-".join)
def test_golden_decodes_to_the_formatted_text(tok, key):
    seg, _ = _segments(tok, key)
    prompt, chain, answer, eos = GOLDEN[key]
    assert [tok.decode(ids) for ids in (prompt, chain, answer, eos)] == [
        seg.prompt, seg.chain, seg.answer, "<|im_end|>"]


@pytest.mark.parametrize("key", GOLDEN, ids="-".join)
@pytest.mark.parametrize("w_chain,w_answer", [(1.0, 1.0), (0.5, 2.0)])
def test_golden_weights(tok, key, w_chain, w_answer):
    name, template, mode = key
    spec = EncodeSpec(template, mode, w_chain, w_answer)
    (ex,) = tokenize.encode_records([RECORDS[name]], tok, spec)
    prompt, chain, answer, eos = GOLDEN[key]
    assert ex.tokens.tolist() == prompt + chain + answer + eos
    assert ex.tokens.dtype == np.int32 and ex.weights.dtype == np.float32
    expected = [0.0] * len(prompt) + [w_chain] * len(chain) + [w_answer] * (len(answer) + 1)
    assert ex.weights.tolist() == expected
    assert ex.kinds.tolist() == [0] * len(prompt) + [1] * len(chain) + [2] * (len(answer) + 1)
    assert ex.id == RECORDS[name].id


@pytest.mark.parametrize("template", ["plain", "chat"])
def test_segments_concatenate_to_the_natural_tokenization(tok, template):
    recs, _ = records.load_records(get_config().data, "train")
    recs = recs[:2000] if template == "plain" else recs[:500]
    spec = EncodeSpec(template, "cot")
    segs = [formatting.format_segments(r, template, "cot", tok) for r in recs]
    whole = tok([s.text for s in segs], add_special_tokens=False)["input_ids"]
    encoded = tokenize.encode_records(recs, tok, spec)
    assert [e.tokens[:-1].tolist() for e in encoded] == whole


def test_end_of_turn_and_no_bos_for_smollm2(tok):
    assert tokenize.end_of_turn_id(tok) == 2
    assert tokenize.bos_ids(tok) == ()


class _BosTokenizer:
    """A tokenizer that adds BOS by itself (like Llama's or Gemma's)."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, texts, add_special_tokens=True):
        one = isinstance(texts, str)
        ids = [[ord(c) for c in t] for t in ([texts] if one else texts)]
        ids = [[1] + x if add_special_tokens else x for x in ids]
        return {"input_ids": ids[0] if one else ids}


def test_bos_is_prepended_when_the_tokenizer_adds_one():
    seg = formatting.Segments("Q", " c", " a")
    (ts,) = tokenize.tokenize_segments([seg], _BosTokenizer(), "plain")
    assert ts == TokenSegments((1, ord("Q")), (32, ord("c")), (32, ord("a")), (2,))


def test_zero_length_target_and_bad_specs():
    with pytest.raises(ValueError, match="zero-length target"):
        tokenize.to_example(TokenSegments((5,), (), (), (2,)), EncodeSpec(), "x")
    with pytest.raises(ValueError, match="leaves no token to learn"):
        EncodeSpec("plain", "answer_only", 1.0, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        EncodeSpec(w_chain=-1.0)
    with pytest.raises(ValueError, match="template must be in"):
        EncodeSpec(template="alpaca")
