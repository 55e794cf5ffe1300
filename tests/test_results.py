"""The committed results reproduce: every committed predictions file, scored again from its
generations under the current rules, gives its committed rows and summary back.

A scoring change (answer extraction, votes, the step checker, a new summary field) that moves a
published number fails here until the files are rescored and the prose that quotes them moves
with it:

    cotjax report rescore results      # rewrites the predictions and summaries, prints old -> new

then update the figures and paired p-values quoted from them (`report.paired_from_files`).
"""

from __future__ import annotations

import pathlib

import pytest

from cotjax import report

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results"
COMMITTED = report.prediction_files([RESULTS], skipped=[])  # rerankings' files have no summary


def test_committed_predictions_are_found():
    assert len(COMMITTED) >= 10, COMMITTED  # the experiments' files, not an empty walk


@pytest.mark.parametrize("predictions", COMMITTED,
                         ids=[str(p.relative_to(RESULTS)) for p in COMMITTED])
def test_committed_summary_and_rows_recompute_from_the_generations(predictions):
    result = report.rescore_file(predictions, write=False)
    moved = result.summary_changed
    assert not moved and not result.rows_changed, (
        f"{predictions.relative_to(RESULTS.parent)} no longer reproduces under the current "
        f"scoring rules:\n{result.describe()}\n"
        f"summary fields (old, new): {moved}\n"
        "Run `cotjax report rescore results`, then update the figures and p-values quoted "
        "from these files.")
