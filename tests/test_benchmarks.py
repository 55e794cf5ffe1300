"""The benchmark scripts end to end at toy sizes: their last line is the JSON they promise, and the
two frameworks they compare did the same work (same losses, same greedy tokens)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _json_lines(args):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_train_throughput_on_random_weights_matches_pytorch():
    r = _json_lines(["benchmarks/train_throughput.py", "--random_init", "--seq_len", "256",
                     "--batch", "2", "--steps", "1", "--rounds", "1", "--threads", "2"])[-1]
    assert r["weights"] == "random" and r["dtype"] == "float32"
    assert r["cotjax_tokens_per_s"] > 0 and r["torch_tokens_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["cotjax_tokens_per_s"] / r["torch_tokens_per_s"], rel=1e-2)
    assert 0 < r["mfu"] < 1 and 0 < r["mfu_causal"] < r["mfu"]
    # Same random weights, same batches, same AdamW: the losses after two updates agree.
    assert r["losses"]["cotjax"] == pytest.approx(r["losses"]["torch"], abs=1e-3)


def test_decode_throughput_rows_match_transformers():
    lines = _json_lines(["benchmarks/decode_throughput.py", "--prompts", "3", "--new_tokens", "6",
                         "--batch_size", "3"])
    assert set(lines[-1]) == {"cotjax_tokens_per_s", "hf_tokens_per_s", "ratio"}
    assert lines[-2] == {"event": "agreement", "identical_rows": 3, "rows": 3}  # fp32 greedy


def test_sample_throughput_engine_and_static_draw_the_same_samples():
    lines = _json_lines(["benchmarks/sample_throughput.py", "--problems", "3", "--k", "2",
                         "--new_tokens", "8", "--rows", "4"])
    assert set(lines[-1]) == {"engine_tokens_per_s", "static_tokens_per_s", "ratio_vs_static",
                              "hf_tokens_per_s", "ratio_vs_hf"}
    assert lines[0]["event"] == "config" and lines[0]["cores"] >= 1
    agreement = next(line for line in lines if line.get("event") == "agreement")
    assert agreement == {"event": "agreement", "identical_samples": 6, "samples": 6}
    useful = {line["system"]: line["useful_tokens"] for line in lines if "system" in line}
    assert useful["engine"] == useful["static"] and 0 < useful["transformers"] <= 6 * 8
