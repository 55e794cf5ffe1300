"""`cotjax eval` end to end: a tiny random decoder with the SmolLM2 tokenizer, on a few GSM8K
and AQuA records, in a subprocess (8 fake devices: data-parallel decoding); checks the files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = ("task", "n", "accuracy", "accuracy_flexible", "steps_total", "steps_valid",
                "chains_all_steps_valid", "correct_with_invalid_step")
ROW_KEYS = ("id", "question", "gold", "generation", "extracted", "correct", "steps_total",
            "steps_valid", "steps")

CONFIG = '''
import ml_collections
from cotjax import defaults


def get_config():
    c = defaults.get_config()
    c.model = "random"
    c.model_arch = ml_collections.ConfigDict(dict(
        family="llama", vocab_size=49152, d_model=32, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, mlp_dim=64, tie_embeddings=True))
    c.tokenizer = {tokenizer!r}
    c.eval.max_new_tokens = 12
    c.eval.batch_size = 4
    return c
'''


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    from cotjax import weights

    root = tmp_path_factory.mktemp("eval_cli")
    tok_dir = root / "tokenizer"
    weights.load_tokenizer("smollm2-135m-instruct").save_pretrained(str(tok_dir))
    path = root / "tiny.py"
    path.write_text(CONFIG.format(tokenizer=str(tok_dir)))
    return path


def _eval(config_path, out, *args):
    cmd = [sys.executable, "-m", "cotjax.cli", "eval", f"--config={config_path}",
           f"--out={out}", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text()), proc.stdout


def test_eval_gsm8k_few_shot_with_self_consistency(config_path, tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    with open(REPO / "data/gsm8k/train.jsonl") as f:
        data.write_text("".join(next(f) for _ in range(3)))
    rows, summary, stdout = _eval(
        config_path, tmp_path / "out", "--task=gsm8k", f"--data={data}",
        "--config.eval.prompting=few_shot_cot", "--config.eval.fewshot=2",
        "--config.eval.num_samples=2", "--config.eval.temperature=1.0")
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["task"] == "gsm8k" and summary["n"] == 3 and len(rows) == 3
    assert summary["prompting"] == "few_shot_cot" and summary["fewshot"] == 2
    assert summary["maj_n"] == 2 and "maj_accuracy" in summary
    assert 0.0 <= summary["accuracy"] <= summary["accuracy_flexible"] <= 1.0
    gold = [json.loads(line)["answer"].split("####")[-1].strip()
            for line in data.read_text().splitlines()]
    assert [r["gold"] for r in rows] == [g.replace(",", "") for g in gold]
    for row in rows:
        for key in ROW_KEYS:
            assert key in row, key
        assert 1 <= row["new_tokens"] <= 12
        assert len(row["samples"]) == 2 and "maj_answer" in row
        assert "\nQuestion:" not in row["generation"]  # cut at the stop string
    assert "accuracy_flexible" in stdout  # the console table
    # Without --workdir it says which model it evaluates before decoding.
    assert "evaluating random (base) on 3 gsm8k questions" in stdout.splitlines()[0]


def test_eval_aqua_zero_shot_chat(config_path, tmp_path):
    rows, summary, _ = _eval(
        config_path, tmp_path / "out", "--task=aqua", "--data=data/aqua/format_sample.jsonl",
        "--config.eval.prompting=zero_shot_cot", "--config.data.template=chat")
    assert summary["task"] == "aqua" and summary["n"] == 5
    assert summary["prompting"] == "zero_shot_cot" and summary["template"] == "chat"
    assert all(r["gold"] in "ABCDE" for r in rows)
    for key in SUMMARY_KEYS:
        assert key in summary, key
