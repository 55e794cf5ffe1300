"""Prompt, chain and answer templates for CoT records (pure Python; no JAX, no token ids).

A record becomes three strings, `prompt + chain + answer`, whose concatenation is the text the
model is trained on; `cotjax.tokenize` tokenizes them separately to build exact loss masks.

Template "plain" (for base models):

    prompt  "Question: {question}\\nAnswer:"     (multiple choice adds "\\nOptions:\\nA) ...")
    chain   " {chain}"                           (cot mode only)
    answer  "\\nThe answer is {answer}."          (" The answer is ..." when there is no chain)

The segment boundaries sit where a byte-level BPE tokenizer splits anyway: a word's leading space
belongs to that word (" Natalia"), and "\\n" before a letter is its own pre-token, so tokenizing
the segments one by one gives the natural tokenization of the whole text (true for every GSM8K
training problem with the SmolLM2 tokenizer in both templates; the tests check a slice).

Template "chat" (for instruct models): `tokenizer.apply_chat_template` with the question as the
user turn and chain + answer as the assistant turn. The prompt is the conversation with the
generation prompt, so the target starts exactly at the assistant content; the end-of-turn token is
added by `cotjax.tokenize`.

Modes: "cot" (target = chain + answer) and "answer_only" (target = answer, the direct fine-tuning
baseline). Few-shot exemplars (prompting baselines) are earlier question/answer pairs prepended to
the prompt: blocks separated by a blank line (plain) or earlier user/assistant turns (chat).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from cotjax.records import CoTRecord

TEMPLATES = ("plain", "chat")
MODES = ("cot", "answer_only")


@dataclasses.dataclass(frozen=True)
class Segments:
    """The text of one training example, cut where the loss weights change."""

    prompt: str
    chain: str
    answer: str

    @property
    def text(self) -> str:
        return self.prompt + self.chain + self.answer


def _check(template: str, mode: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def question_text(record: CoTRecord) -> str:
    """The question, with one line per option for multiple choice."""
    if not record.options:
        return record.question
    return "\n".join([record.question, "Options:"] + [f"{k}) {v}" for k, v in record.options])


def answer_text(record: CoTRecord) -> str:
    """`The answer is 72.`, or `The answer is C) 18.` with the option text for multiple choice."""
    if not record.answer.strip():
        raise ValueError(f"record {record.id!r}: empty answer (a zero-length target)")
    options = dict(record.options)
    shown = record.answer
    if shown in options:
        shown = f"{shown}) {options[shown]}"
    return f"The answer is {shown}."


def _chain(record: CoTRecord, mode: str) -> str:
    return record.chain.strip() if mode == "cot" else ""


def _plain_target(record: CoTRecord, mode: str) -> tuple[str, str]:
    chain = _chain(record, mode)
    if chain:
        return " " + chain, "\n" + answer_text(record)
    return "", " " + answer_text(record)


def _plain_prompt(record: CoTRecord, fewshot: Sequence[CoTRecord], mode: str) -> str:
    shots = [f"Question: {question_text(r)}\nAnswer:" + "".join(_plain_target(r, mode)) + "\n\n"
             for r in fewshot]
    return "".join(shots) + f"Question: {question_text(record)}\nAnswer:"


def _chat_content(record: CoTRecord, mode: str) -> tuple[str, str]:
    chain = _chain(record, mode)
    return (chain, "\n" + answer_text(record)) if chain else ("", answer_text(record))


def _chat_messages(record: CoTRecord, fewshot: Sequence[CoTRecord], mode: str) -> list[dict]:
    messages = []
    for r in fewshot:
        messages += [{"role": "user", "content": question_text(r)},
                     {"role": "assistant", "content": "".join(_chat_content(r, mode))}]
    return messages + [{"role": "user", "content": question_text(record)}]


def _chat_prompt(record, fewshot, mode, tokenizer) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat' needs a tokenizer with a chat template")
    return tokenizer.apply_chat_template(
        _chat_messages(record, fewshot, mode), add_generation_prompt=True, tokenize=False)


def format_prompt(record: CoTRecord, template: str, tokenizer=None,
                  fewshot: Sequence[CoTRecord] = (), mode: str = "cot") -> str:
    """The text a model continues to answer `record` (evaluation, decoding, few-shot baselines)."""
    _check(template, mode)
    if template == "plain":
        return _plain_prompt(record, fewshot, mode)
    return _chat_prompt(record, fewshot, mode, tokenizer)


def format_segments(record: CoTRecord, template: str, mode: str, tokenizer=None,
                    fewshot: Sequence[CoTRecord] = ()) -> Segments:
    """Prompt, chain and answer text of one training example."""
    prompt = format_prompt(record, template, tokenizer, fewshot, mode)
    if template == "plain":
        return Segments(prompt, *_plain_target(record, mode))
    chain, answer = _chat_content(record, mode)
    _check_chat_prefix(record, fewshot, mode, tokenizer, prompt, chain + answer)
    return Segments(prompt, chain, answer)


def _check_chat_prefix(record, fewshot, mode, tokenizer, prompt: str, content: str) -> None:
    # Some templates rewrite the assistant turn (strip it, insert thinking tags); then the
    # segment cut would be wrong, so refuse rather than mis-mask.
    messages = _chat_messages(record, fewshot, mode) + [{"role": "assistant", "content": content}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt + content):
        raise ValueError("the tokenizer's chat template does not render the assistant content "
                         "right after the generation prompt; use template 'plain'")


def select_fewshot(records: Sequence[CoTRecord], k: int, seed: int) -> tuple[CoTRecord, ...]:
    """k exemplars drawn without replacement by a seeded generator (stable across runs)."""
    if not 0 <= k <= len(records):
        raise ValueError(f"cannot draw {k} few-shot exemplars from {len(records)} records")
    return tuple(records[i] for i in random.Random(seed).sample(range(len(records)), k))
