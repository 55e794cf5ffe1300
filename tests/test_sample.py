"""`cotjax sample`: greedy K=1 is eval's greedy text; a killed run resumes to the same samples;
processes split the problems; settings are checked against the manifest; bad lines are named."""

import json
import shutil

import pytest

from cotjax import checkpoint, evaluate, sample
from cotjax.cli import main as cli_main

N_PROBLEMS = 6


def _config(tiny_run, **eval_overrides):
    config, _ = checkpoint.read_run_config(tiny_run["workdir"])
    config.eval.max_examples = N_PROBLEMS
    config.eval.batch_size = 4
    for k, v in eval_overrides.items():
        setattr(config.eval, k, v)
    return config


def _rows(out):
    rows = []
    for shard in sorted(out.glob("samples-*.jsonl")):
        rows += sample.read_samples(shard)
    return {(r["problem"], r["sample"]): r for r in rows}


def test_greedy_k1_is_evals_greedy_text(tiny_run, tmp_path):
    config = _config(tiny_run, temperature=0.0)
    evaluate.run_eval(config, tiny_run["workdir"], out=str(tmp_path / "eval"), progress=False)
    want = [json.loads(line) for line in open(tmp_path / "eval" / "predictions.jsonl")]
    sample.run_sample(config, str(tiny_run["workdir"]), k=1, out=str(tmp_path / "s"),
                      progress=False)
    got = _rows(tmp_path / "s")
    assert len(got) == N_PROBLEMS
    for i, row in enumerate(want):
        s = got[(i, 0)]
        assert (s["generation"], s["finish"], s["correct"]) == (
            row["generation"], row["finish"], row["correct"])
        assert s["question"] == row["question"] and s["temperature"] == 0.0
        assert s["model"].endswith("step 6")


@pytest.fixture(scope="module")
def drawn(tiny_run, tmp_path_factory):
    """An uninterrupted run: 6 problems x 3 samples at temperature 0.7."""
    out = tmp_path_factory.mktemp("drawn")
    sample.run_sample(_config(tiny_run), str(tiny_run["workdir"]), k=3, out=str(out),
                      progress=False)
    return out


def test_lines_carry_provenance_and_scores(drawn):
    rows = _rows(drawn)
    assert sorted(rows) == [(p, s) for p in range(N_PROBLEMS) for s in range(3)]
    r = rows[(2, 1)]
    for field in ("id", "question", "gold", "generation", "finish", "new_tokens", "logprob",
                  "extracted", "extracted_flexible", "correct", "steps_total", "steps",
                  "model", "prompting", "template", "temperature", "top_k", "top_p", "seed"):
        assert field in r, field
    assert r["temperature"] == 0.7 and r["logprob"] < 0
    assert len({rows[(2, s)]["generation"] for s in range(3)}) > 1
    manifest = json.loads((drawn / "manifest.json").read_text())
    assert manifest["k"] == 3 and manifest["problems"] == N_PROBLEMS
    assert manifest["shards"] == ["samples-00000-of-00001.jsonl"]


def test_a_killed_run_resumes_to_the_same_samples(tiny_run, drawn, tmp_path, capsys):
    out = tmp_path / "killed"
    shutil.copytree(drawn, out)
    shard = out / "samples-00000-of-00001.jsonl"
    lines = shard.read_bytes().split(b"\n")
    # killed after 7 complete lines, in the middle of the 8th
    shard.write_bytes(b"\n".join(lines[:7]) + b"\n" + lines[7][:40])
    totals = sample.run_sample(_config(tiny_run), str(tiny_run["workdir"]), k=3, out=str(out),
                               progress=False)
    assert "cut a half-written last line" in capsys.readouterr().out
    assert totals["already_there"] == 7 and totals["drawn"] == 3 * N_PROBLEMS - 7
    assert _rows(out) == _rows(drawn)
    engine_totals = totals["engine"]  # the host's account of the resumed draw
    assert engine_totals["rounds"] > 0 and engine_totals["decode_s"] > 0
    # a second rerun draws nothing
    again = sample.run_sample(_config(tiny_run), str(tiny_run["workdir"]), k=3, out=str(out),
                              progress=False)
    assert again["drawn"] == 0


def test_processes_split_the_problems(tiny_run, drawn, tmp_path):
    out = tmp_path / "two"
    for p in (0, 1):
        sample.run_sample(_config(tiny_run), str(tiny_run["workdir"]), k=3, out=str(out),
                          progress=False, process_index=p, process_count=2)
    shard0 = sample.read_samples(out / "samples-00000-of-00002.jsonl")
    assert {r["problem"] for r in shard0} == {0, 2, 4}
    assert _rows(out) == _rows(drawn)


def test_other_settings_in_the_same_directory_are_refused(tiny_run, drawn, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(drawn, out)
    with pytest.raises(ValueError, match=r"manifest.json: the samples there were made with "
                                         r"temperature=0.7, this run has temperature=0.9"):
        sample.run_sample(_config(tiny_run, temperature=0.9), str(tiny_run["workdir"]), k=3,
                          out=str(out), progress=False)
    sample.run_sample(_config(tiny_run, temperature=0.9), str(tiny_run["workdir"]), k=1,
                      out=str(out), progress=False, overwrite=True)
    assert len(_rows(out)) == N_PROBLEMS


def test_hint_reaches_the_prompt_not_the_lines(tiny_run, tmp_path):
    config = _config(tiny_run, max_examples=2)
    sample.run_sample(config, str(tiny_run["workdir"]), k=1, out=str(tmp_path), hint=True,
                      progress=False)
    rows = _rows(tmp_path)
    assert all(r["hint"] and "Hint" not in r["question"] for r in rows.values())
    assert json.loads((tmp_path / "manifest.json").read_text())["hint"] is True


def test_bad_sample_lines_are_named(tmp_path):
    f = tmp_path / "samples-00000-of-00001.jsonl"
    f.write_text('{"problem": 0, "sample": 0}\nnot json\n{"problem": 1, "sample": 0}\n')
    with pytest.raises(ValueError, match=r"samples-00000-of-00001.jsonl:2: "):
        sample.read_samples(f, repair=True)
    f.write_text('{"problem": 0, "sample": 0}\n{"question": "x"}\n')
    with pytest.raises(ValueError, match=r":2: not a sample line"):
        sample.read_samples(f)
    f.write_text('{"problem": 0, "sample": 0}\n{"problem": 0, "sample": 1}')
    with pytest.raises(ValueError, match=r":2: the last line has no newline"):
        sample.read_samples(f)
    assert len(sample.read_samples(f, repair=True)) == 2
    assert f.read_text().endswith("}\n")


def test_cli_needs_a_model_and_an_out(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["cotjax", "sample", "--k=2"])
    assert e.value.code == 2
    assert "needs --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["cotjax", "sample", "--out=/tmp/x"])
    assert "say which model samples" in capsys.readouterr().err
