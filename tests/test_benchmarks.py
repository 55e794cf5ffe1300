"""The benchmark scripts end to end at toy sizes: their last line is the JSON they promise, and the
two frameworks they compare did the same work (same losses, same greedy tokens)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _json_lines(args):
    # One CPU device, as the benchmarks run for their readers: conftest's 8 fake devices would
    # split every toy step eight ways and change the machine line's xla_flags.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _assert_machine(m, probes):
    """The machine description every benchmark's last line carries (benchmarks/machine.py)."""
    assert m["cpu"]["cores"] >= 1 and m["cpu"]["model"] and m["backend"] == "cpu"
    assert m["torch_threads"] >= 1 and isinstance(m["xla_flags"], str)
    if probes:
        assert m["jax_gflops"] > 0 and m["torch_gflops"] > 0


@pytest.mark.slow
def test_train_throughput_on_random_weights_matches_pytorch():
    r = _json_lines(["benchmarks/train_throughput.py", "--random_init", "--layers", "4",
                     "--seq_len", "256", "--batch", "2", "--steps", "1", "--rounds", "1",
                     "--threads", "2"])[-1]
    assert r["weights"] == "random" and r["dtype"] == "float32" and r["layers"] == 4
    assert r["cotjax_tokens_per_s"] > 0 and r["torch_tokens_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["cotjax_tokens_per_s"] / r["torch_tokens_per_s"], rel=1e-2)
    assert 0 < r["mfu"] < 1 and 0 < r["mfu_causal"] < r["mfu"]
    # Same random weights, same batches, same AdamW: the losses after two updates agree.
    assert r["losses"]["cotjax"] == pytest.approx(r["losses"]["torch"], abs=1e-3)
    _assert_machine(r["machine"], probes=True)


@pytest.mark.slow
def test_model_load_reads_the_conversion_back_faster_than_it_converts():
    lines = _json_lines(["benchmarks/model_load.py", "--presets", "smollm2-135m-instruct"])
    row, last = lines[0], lines[-1]
    assert row["preset"] == "smollm2-135m-instruct" and row["hf_s"] > 0
    assert 0 < row["cotjax_cached_s"] < row["cotjax_cold_s"]
    assert last["cached_vs_cold"] == {"smollm2-135m-instruct": pytest.approx(
        row["cotjax_cold_s"] / row["cotjax_cached_s"], rel=0.05)}
    _assert_machine(last["machine"], probes=False)


@pytest.mark.slow
def test_decode_throughput_rows_match_transformers():
    lines = _json_lines(["benchmarks/decode_throughput.py", "--prompts", "3", "--new_tokens", "6",
                         "--batch_size", "3"])
    assert set(lines[-1]) == {"cotjax_tokens_per_s", "hf_tokens_per_s", "ratio", "machine"}
    _assert_machine(lines[-1]["machine"], probes=True)
    assert lines[-2] == {"event": "agreement", "identical_rows": 3, "rows": 3}  # fp32 greedy


@pytest.mark.slow
def test_sample_throughput_engine_and_static_draw_the_same_samples():
    lines = _json_lines(["benchmarks/sample_throughput.py", "--problems", "3", "--k", "2",
                         "--new_tokens", "8", "--rows", "4"])
    assert set(lines[-1]) == {"engine_tokens_per_s", "static_tokens_per_s", "ratio_vs_static",
                              "hf_tokens_per_s", "ratio_vs_hf", "machine"}
    assert lines[0]["event"] == "config"
    _assert_machine(lines[-1]["machine"], probes=True)
    agreement = next(line for line in lines if line.get("event") == "agreement")
    assert agreement == {"event": "agreement", "identical_samples": 6, "samples": 6}
    useful = {line["system"]: line["useful_tokens"] for line in lines if "system" in line}
    assert useful["engine"] == useful["static"] and 0 < useful["transformers"] <= 6 * 8


def test_cpu_matmul_products_are_one_training_steps_flops():
    """The products cpu_matmul.py times are exactly the FLOPs `metrics.flops_per_token` counts
    for a step (6 N per token + attention over 512-token blocks): none missing, none twice."""
    import cpu_matmul

    from cotjax import metrics, weights
    from cotjax import model as model_lib

    hf = weights.read_config("smollm2-135m-instruct")
    cfg = model_lib.ModelConfig.from_hf(hf)
    tokens = 2048
    total = sum(s["count"] * 2.0 * s["b"] * s["m"] * s["k"] * s["n"]
                for s in cpu_matmul.shapes(hf, tokens))
    assert total == pytest.approx(metrics.flops_per_token(cfg, 512) * tokens, rel=1e-12)


@pytest.mark.slow
def test_cpu_matmul_sweep_names_the_library_and_the_error():
    r = _json_lines(["benchmarks/cpu_matmul.py", "--tokens", "64", "--reps", "1", "--passes", "1",
                     "--settings", "default,xla_emitter"])[-1]
    assert set(r["settings"]) == {"default", "xla_emitter"} and r["best"] in r["settings"]
    default, emitter = r["settings"]["default"], r["settings"]["xla_emitter"]
    assert "ynn" in default["libraries"] and emitter["libraries"] == ["xla"]
    for s in (default, emitter):
        assert s["step_matmul_s"] > 0 and 0 <= s["max_rel_error"] < 1e-5
    _assert_machine(r["machine"], probes=True)


@pytest.mark.slow
def test_train_throughput_against_compiled_pytorch_on_a_configs_large_shape():
    """--torch_compile and --arch: the compiled PyTorch baseline trains the same architecture
    (Qwen3's, cut to 2 layers to fit the CPU test budget) to the same loss."""
    r = _json_lines(["benchmarks/train_throughput.py", "--arch", "qwen3-0.6b", "--layers", "2",
                     "--seq_len", "128", "--batch", "1", "--steps", "1", "--rounds", "1",
                     "--threads", "2", "--torch_compile", "--attention", "fused"])[-1]
    assert r["arch"] == "qwen3-0.6b" and r["layers"] == 2 and r["torch_compile"]
    assert r["attention"] == "fused"
    assert r["weights"] == "random"
    assert r["torch_tokens_per_s"] > 0
    assert r["losses"]["cotjax"] == pytest.approx(r["losses"]["torch"], abs=2e-3)


@pytest.mark.slow
def test_tool_rounds_shares_draw_the_same_samples_in_fewer_rounds():
    """benchmarks/tool_rounds.py: the calculator on SmolLM2 with a round per trigger and with
    rows that wait; every share draws the first one's samples, with no more rounds."""
    lines = _json_lines(["benchmarks/tool_rounds.py", "--problems", "4", "--k", "2",
                         "--new_tokens", "48", "--rows", "8", "--shares", "0,0.5"])
    assert set(lines[-1]) == {"tokens_per_s", "rounds", "ratio_vs_first", "machine"}
    _assert_machine(lines[-1]["machine"], probes=True)
    every, half = (line for line in lines if "wait_share" in line)
    assert every["identical_to_first"] == half["identical_to_first"] == every["samples"] == 8
    assert every["useful_tokens"] == half["useful_tokens"] > 0
    assert every["waits"] == 0 and half["rounds"] <= every["rounds"]
    assert every["calculator_inserts"] == half["calculator_inserts"]
