"""Segment-wise tokenization and per-token loss weights (pure Python + numpy).

The prompt, chain, answer and end-of-sequence are tokenized as separate segments and
concatenated, so the loss masks are exact: no response template is searched for in token space.
`cotjax.formatting` cuts the text where the tokenizer splits anyway, so the concatenation equals
the tokenization of the whole text. A BOS token is prepended when the tokenizer adds one itself
(`tokenizer("x")` starts with `bos_token_id`); chat templates write their own BOS in the text.

Per-token weights (the weight of a token *as a prediction target*), and kinds (which segment
the token belongs to, so metrics can report the chain and the answer loss separately):

    prompt 0 | chain w_chain | answer w_answer | eos w_answer
    KIND_PROMPT | KIND_CHAIN | KIND_ANSWER     | KIND_ANSWER

The EOS segment is the tokenizer's `eos_token_id` for the plain template and the template's
end-of-turn token (`<|im_end|>`, `<end_of_turn>`) for the chat template. The pipeline shifts these
weights onto the input positions that predict each token.

Loss normalisation: per weighted token over the global batch,

    loss = sum_{b,t} w[b,t] * ce[b,t] / sum_{b,t} w[b,t]

so every weighted token counts the same whatever row, example or device it sits in, and the loss
does not depend on how examples were packed or sharded (sum both numerator and denominator across
devices before dividing).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from cotjax.formatting import MODES, TEMPLATES, Segments, format_prompt, format_segments
from cotjax.records import CoTRecord

# Token kinds; padding is KIND_PROMPT too (it never carries loss).
KIND_PROMPT, KIND_CHAIN, KIND_ANSWER = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class EncodeSpec:
    """How records become weighted token sequences."""

    template: str = "plain"
    mode: str = "cot"
    w_chain: float = 1.0
    w_answer: float = 1.0

    def __post_init__(self):
        if self.template not in TEMPLATES or self.mode not in MODES:
            raise ValueError(f"template must be in {TEMPLATES} and mode in {MODES}, "
                             f"got {self.template!r}, {self.mode!r}")
        if self.w_chain < 0 or self.w_answer < 0:
            raise ValueError("loss weights w_chain and w_answer must be >= 0")
        if self.w_answer == 0 and (self.mode == "answer_only" or self.w_chain == 0):
            raise ValueError(f"mode {self.mode!r} with w_chain={self.w_chain}, "
                             f"w_answer={self.w_answer} leaves no token to learn")

    @classmethod
    def from_config(cls, data) -> EncodeSpec:
        return cls(data.template, data.mode, float(data.w_chain), float(data.w_answer))


@dataclasses.dataclass(frozen=True)
class TokenSegments:
    """Token ids of one example by segment (the prompt includes BOS if any)."""

    prompt: tuple[int, ...]
    chain: tuple[int, ...]
    answer: tuple[int, ...]
    eos: tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
    """One tokenized example: `weights[i]` is the loss weight of predicting `tokens[i]`."""

    tokens: np.ndarray  # int32 [L]
    weights: np.ndarray  # float32 [L]
    id: str = ""
    kinds: np.ndarray | None = None  # int32 [L]: KIND_PROMPT | KIND_CHAIN | KIND_ANSWER
    # Reward examples (`reward_example`): the label of the score read at each position, where
    # `weights` is 1; the weights are then not next-token weights (see cotjax.loss.RewardLoss).
    labels: np.ndarray | None = None  # float32 [L]

    def __len__(self) -> int:
        return len(self.tokens)


def bos_ids(tokenizer) -> tuple[int, ...]:
    """(bos,) when the tokenizer adds a BOS itself, else ()."""
    bos = tokenizer.bos_token_id
    added = tokenizer("x")["input_ids"]
    return (bos,) if bos is not None and added and added[0] == bos else ()


@functools.lru_cache(maxsize=8)
def end_of_turn_id(tokenizer) -> int:
    """The chat template's end-of-turn token: the first token after the assistant content."""
    user, content = [{"role": "user", "content": "Hi"}], "Hello there"
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": content}], tokenize=False)
    rest = full[len(prompt) + len(content):]
    ids = tokenizer(rest, add_special_tokens=False)["input_ids"]
    if not ids or ids[0] not in set(tokenizer.all_special_ids) | set(
            tokenizer.get_added_vocab().values()):
        raise ValueError(f"cannot find the chat template's end-of-turn token in {rest!r}")
    return ids[0]


def eos_ids(tokenizer, template: str) -> tuple[int, ...]:
    """The EOS segment: end-of-turn for chat, `eos_token_id` for plain."""
    if template == "chat":
        return (end_of_turn_id(tokenizer),)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id; the plain template needs one")
    return (tokenizer.eos_token_id,)


def tokenize_segments(segments: Sequence[Segments], tokenizer, template: str
                      ) -> list[TokenSegments]:
    """Batch-tokenize each segment kind separately (the fast tokenizer runs in parallel)."""
    def encode(texts):
        return tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    bos = () if template == "chat" else bos_ids(tokenizer)
    eos = eos_ids(tokenizer, template)
    prompts = encode(s.prompt for s in segments)
    chains = encode(s.chain for s in segments)
    answers = encode(s.answer for s in segments)
    return [TokenSegments(bos + tuple(p), tuple(c), tuple(a), eos)
            for p, c, a in zip(prompts, chains, answers, strict=True)]


def to_example(seg: TokenSegments, spec: EncodeSpec, id: str = "") -> Example:
    """Concatenate the segments and lay out their loss weights."""
    if not seg.chain and not seg.answer:
        raise ValueError(f"example {id!r}: zero-length target")
    parts = [(seg.prompt, 0.0, KIND_PROMPT), (seg.chain, spec.w_chain, KIND_CHAIN),
             (seg.answer, spec.w_answer, KIND_ANSWER), (seg.eos, spec.w_answer, KIND_ANSWER)]
    tokens = np.fromiter((t for ids, _, _ in parts for t in ids), dtype=np.int32)
    weights = np.concatenate([np.full(len(ids), w, np.float32) for ids, w, _ in parts])
    kinds = np.concatenate([np.full(len(ids), k, np.int32) for ids, _, k in parts])
    return Example(tokens, weights, id, kinds)


def encode_records(records: Sequence[CoTRecord], tokenizer, spec: EncodeSpec,
                   fewshot: Sequence[CoTRecord] = ()) -> list[Example]:
    """Format, tokenize and weight every record."""
    segments = [format_segments(r, spec.template, spec.mode, tokenizer, fewshot) for r in records]
    token_segments = tokenize_segments(segments, tokenizer, spec.template)
    return [to_example(s, spec, r.id) for s, r in zip(token_segments, records, strict=True)]


def reward_prompt(question: str, tokenizer, template: str) -> list[int]:
    """The tokens a reward model reads before a generation: the question's prompt as training
    formats it (with BOS for the plain template)."""
    prompt = format_prompt(CoTRecord(question=question, chain="", answer=""), template, tokenizer)
    bos = () if template == "chat" else bos_ids(tokenizer)
    return [*bos, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]


def reward_example(question: str, generation: str, ends: Sequence[int],
                   labels: Sequence[float | None], tokenizer, template: str, id: str = ""
                   ) -> tuple[Example, np.ndarray]:
    """(example, positions) of a generation scored by a reward model: the question's prompt
    (as training formats it, with BOS for plain), then the generation cut at `ends` (character
    offsets, increasing), each piece tokenized as its own segment, so that piece k's last token
    is exactly where score k is read (`positions[k]`). Labels: `labels[k]` at `positions[k]`
    with weight 1; None: read but not trained (weight 0). Text after the last end is left out.
    """
    if not ends or any(b <= a for a, b in zip([0, *ends], ends)) or ends[-1] > len(generation):
        raise ValueError(f"example {id!r}: score positions {list(ends)} must increase within "
                         f"the generation ({len(generation)} characters)")
    if len(labels) != len(ends):
        raise ValueError(f"example {id!r}: {len(labels)} labels for {len(ends)} positions")
    # The plain template's target starts with a space; a generation decoded after "Answer:"
    # usually carries it already.
    lead = " " if template == "plain" and not generation[:1].isspace() else ""
    pieces = [generation[a:b] for a, b in zip([0, *ends], ends)]
    pieces[0] = lead + pieces[0]
    prompt = reward_prompt(question, tokenizer, template)
    ids = tokenizer(pieces, add_special_tokens=False)["input_ids"]
    tokens = np.fromiter((t for part in [prompt, *ids] for t in part), dtype=np.int32)
    positions = len(prompt) + np.cumsum([len(p) for p in ids]) - 1
    weights = np.zeros(len(tokens), np.float32)
    values = np.zeros(len(tokens), np.float32)
    for pos, label in zip(positions, labels, strict=True):
        if label is not None:
            weights[pos], values[pos] = 1.0, float(label)
    kinds = np.zeros(len(tokens), np.int32)
    return Example(tokens, weights, id, kinds, values), positions.astype(np.int32)
