"""Step-level beam search guided by a PRM (cotjax/search.py): where a step ends, which partial
chains are kept, how the answer is chosen. The model-backed run is in test_reward.py (it uses
the trained PRM fixture there). Pure Python."""

from __future__ import annotations

import pytest

from cotjax import search
from cotjax.search import Beam


@pytest.mark.parametrize("text,end", [
    ("3 + 4 = 7.\nThen", 11),
    ("\n\n3 + 4 = 7.\n", 13),  # blank lines before a step are part of it, not empty steps
    ("3 + 4 = 7.", None),
    ("\n\n  \n", None),
    ("", None),
])
def test_a_step_ends_at_the_first_newline_after_some_text(text, end):
    assert search.step_end(text) == end


def _tree(finish_at: int):
    """A hand-made policy: every chain grows by 's<e>\\n' for e < expand_k; the e = 0 child
    finishes (EOS) from depth `finish_at` on. The scorer prefers larger digits."""
    calls = []

    def expand(todo):
        calls.append([(p, b, d, beam.text) for p, b, d, beam in todo])
        assert all(not beam.finish for *_, beam in todo), "a finished chain was expanded"
        return [[Beam(beam.text + f"s{e}\n", 0.0, "eos" if e == 0 and d >= finish_at else "", 1)
                 for e in range(3)] for p, b, d, beam in todo]

    def score(items):  # each candidate comes with the chain it grew from
        assert all(text.startswith(parent) and text[len(parent):].count("\n") == 1
                   for _, text, parent in items)
        return [sum(int(c) for c in text if c.isdigit()) / 10 for _, text, _ in items]

    return expand, score, calls


def test_the_best_width_chains_are_kept_and_finished_ones_are_not_expanded():
    expand, score, calls = _tree(finish_at=1)
    final = search.beam_search(2, expand, score, width=2, expand_k=3, max_steps=3)
    # depth 0: s2 (.2), s1 (.1) kept; depth 1: s2s2 (.4), s2s1 (.3) beat s1s2 (.3, later);
    # depth 2: s2s2s2 (.6), then s2s2s1 and s2s1s2 (.5): the earlier candidate wins the tie.
    for beam in final:
        assert [b.text for b in beam] == ["s2\ns2\ns2\n", "s2\ns2\ns1\n"]
        assert [b.score for b in beam] == [pytest.approx(0.6), pytest.approx(0.5)]
        assert all(b.finish == "steps" for b in beam)  # open after max_steps: closed as such
    assert [len(c) for c in calls] == [2, 4, 4]  # 1 then `width` open chains per problem


def test_a_finished_chain_stays_while_it_ranks_in_the_beam():
    expand, _, calls = _tree(finish_at=0)

    def score(items):  # finishing is what scores: s0 chains (EOS) beat every open one
        return [1.0 if text.endswith("s0\n") else 0.1 for _, text, _ in items]

    final = search.beam_search(1, expand, score, width=2, expand_k=3, max_steps=5)
    assert [(b.text, b.finish) for b in final[0]] == [("s0\n", "eos"), ("s1\ns0\n", "eos")]
    assert len(calls) == 2  # nothing open after depth 1: the search stopped early


@pytest.mark.parametrize("distinct", [True, False])
def test_a_distinct_beam_keeps_each_chain_once(distinct):
    """Two of the three expansions write the same step: a distinct beam holds different
    chains; otherwise the copies crowd the other chains out."""
    def expand(todo):
        return [[Beam(beam.text + step, 0.0, "", 1) for step in ("a9\n", "a9\n", "b1\n")]
                for *_, beam in todo]

    def score(items):
        return [sum(int(c) for c in text if c.isdigit()) / 10 for _, text, _ in items]

    final = search.beam_search(1, expand, score, width=2, expand_k=3, max_steps=2,
                               distinct=distinct)
    texts = [b.text for b in final[0]]
    if distinct:
        assert texts == ["a9\na9\n", "a9\nb1\n"]
    else:
        assert texts == ["a9\na9\n", "a9\na9\n"]


def test_bad_search_sizes_are_refused():
    expand, score, _ = _tree(0)
    with pytest.raises(ValueError, match="width, expansions and steps >= 1"):
        search.beam_search(1, expand, score, width=0, expand_k=3, max_steps=2)


def test_the_answer_is_the_best_finished_chain_and_the_weighted_vote():
    beam = [Beam("2 + 2 = 5.\nThe answer is 5.", 0.9, "steps"),  # open: not chosen
            Beam("2 + 2 = 4.\nThe answer is 4.", 0.6, "eos"),
            Beam("2 * 2 = 5.\nThe answer is 5.", 0.3, "eos"),
            Beam("2 * 2 = 5.\nThe answer is 5.", 0.2, "stop")]
    got = search.choose(beam, "4", "gsm8k")
    assert got["best"] is beam[1] and got["scores"]["correct"]
    assert got["weighted"] == "4" and got["weighted_correct"]  # 0.6 against 0.3 + 0.2
    got = search.choose([Beam("no answer here", 0.9, "eos"), Beam("The answer is 3.", 0.1, "eos")],
                        "3", "gsm8k")
    assert got["best"].text == "The answer is 3."  # a chain that states an answer first
