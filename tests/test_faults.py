"""Bad input and faults in a training run: what was skipped or dropped is printed and recorded,
a run refuses past a limit, non-finite updates are bounded and never saved as "best", a resume
replays no metric rows twice, and an unreadable newest checkpoint is skipped (exactly) or named."""

import json
import shutil

import pytest

from _train_utils import tiny_config, write_byte_tokenizer
from cotjax import train


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_byte_tokenizer(tmp_path_factory.mktemp("tok") / "bytes")


def _gsm8k_file(path, short=11, long=7):
    """`short` records that fit 128 byte-tokens and `long` ones that do not."""
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}
            for i in range(short)]
    rows += [{"question": "Long " + "x" * 200 + "?", "answer": "1 + 1 = 2\n#### 2"}
             for _ in range(long)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tok_dir, data_file, **train_kw):
    config = tiny_config(tok_dir, **train_kw)
    config.data.source = "gsm8k"
    config.data.path = str(data_file)
    config.data.validation_size = 0
    config.data.num_epochs = -1
    return config


def test_dropped_examples_are_printed_recorded_and_limited(tok_dir, tmp_path, capsys):
    config = _config(tok_dir, _gsm8k_file(tmp_path / "d.jsonl"), steps=2)
    config.data.max_skipped_fraction = 0.5
    result = train.train(config, tmp_path / "run")
    out = capsys.readouterr().out
    assert ("data: 18 records read, 0 skipped as bad, 11 training examples, 7 dropped and 0 "
            "truncated as longer than seq_len=128") in out
    assert result.data == {"read": 18, "skipped": 0, "examples": 11, "dropped": 7,
                           "truncated": 0}
    line = json.loads(train.final_line(result))
    assert line["data/examples"] == 11 and line["data/dropped"] == 7
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["dropped"] == 7 and report["examples"] == 11

    config.data.max_skipped_fraction = 0.1
    with pytest.raises(ValueError, match=r"7 of 18 records were skipped or dropped \(38\.9%\), "
                                         r"more than data.max_skipped_fraction=0.1"):
        train.train(config, tmp_path / "refused")


def test_skipped_bad_records_show_their_reasons(tok_dir, tmp_path, capsys):
    data = _gsm8k_file(tmp_path / "d.jsonl", short=19, long=0)
    data.write_text(data.read_text() + '{"question": "q", "answer": "x\\n#### twelve"}\n')
    config = _config(tok_dir, data, steps=1)
    config.data.on_bad_record = "skip"
    result = train.train(config, tmp_path / "run")
    out = capsys.readouterr().out
    assert "20 records read, 1 skipped as bad" in out
    assert f"  skipped: {data}:20: field 'answer' ends in '#### twelve', not a number" in out
    assert result.data["examples"] == 19


def test_consecutive_nonfinite_updates_stop_the_run(tok_dir, tmp_path):
    config = tiny_config(tok_dir, steps=8, lr=1e30, grad_clip=0.0, warmup_steps=0,
                         schedule="constant", on_nonfinite="skip", max_consecutive_skips=2)
    with pytest.raises(FloatingPointError, match=r"3 updates in a row .* more than "
                                                 r"train.max_consecutive_skips=2"):
        train.train(config, tmp_path / "skip")


def test_a_nan_validation_loss_is_never_the_best_and_the_last_line_is_json(tok_dir, tmp_path):
    config = tiny_config(tok_dir, steps=4, lr=1e30, grad_clip=0.0, warmup_steps=0,
                         schedule="constant", on_nonfinite="skip", eval_every=2,
                         checkpoint_every=2, max_consecutive_skips=100)
    result = train.train(config, tmp_path / "nan")
    assert result.val_metrics["loss"] != result.val_metrics["loss"]  # NaN: the case at hand
    line = train.final_line(result)
    assert "NaN" not in line and json.loads(line)["val/loss"] is None
    # Checkpoints were saved (latest), but none carries a metric that could make it "best".
    assert (tmp_path / "nan" / "checkpoints" / "4").is_dir()
    assert not list((tmp_path / "nan" / "checkpoints").glob("*/metrics/metrics"))


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _losses(workdir):
    return {r["step"]: r["loss"] for r in _rows(workdir) if "loss" in r}


def _constant_lr(tok_dir, steps, **kw):
    # A constant schedule makes the first piece's lr independent of the total steps, so a
    # run resumed with more steps must match one that ran them all at once.
    return tiny_config(tok_dir, steps=steps, warmup_steps=0, schedule="constant", log_every=1,
                       checkpoint_every=2, keep=5, keep_best=0, **kw)


def test_resume_falls_back_past_an_unreadable_checkpoint_exactly(tok_dir, tmp_path, capsys):
    reference = tmp_path / "reference"
    train.train(_constant_lr(tok_dir, 8), reference)

    workdir = tmp_path / "run"
    train.train(_constant_lr(tok_dir, 6), workdir)
    step6 = workdir / "checkpoints" / "6"
    for f in (step6 / "params").rglob("*"):  # damage the newest checkpoint's arrays
        if f.is_file() and f.stat().st_size > 0 and "zarr" not in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    capsys.readouterr()
    result = train.train(_constant_lr(tok_dir, 8), workdir)
    out = capsys.readouterr().out
    assert "checkpoint step 6 is unreadable" in out and "resuming from checkpoint step 4" in out
    assert (workdir / "checkpoints" / "6.unreadable").is_dir() and result.step == 8
    # Exact: steps 5-8 replayed from step 4 give the uninterrupted run's losses, and the
    # metrics file holds each step once (the first piece's rows for 5 and 6 were dropped).
    assert _losses(workdir) == pytest.approx(_losses(reference), rel=1e-6)
    steps = [r["step"] for r in _rows(workdir) if "loss" in r]
    assert steps == sorted(set(steps)) == list(range(1, 9))


def test_without_fallback_an_unreadable_checkpoint_is_named(tok_dir, tmp_path):
    workdir = tmp_path / "run"
    train.train(_constant_lr(tok_dir, 4), workdir)
    shutil.rmtree(workdir / "checkpoints" / "4" / "train")
    config = _constant_lr(tok_dir, 6, resume_fallback=False)
    with pytest.raises(ValueError, match=rf"checkpoint step 4 is unreadable .*: remove "
                                         rf"{workdir}/checkpoints/4 to resume from the previous"):
        train.train(config, workdir)


def test_saves_without_validation_do_not_warn_about_missing_metrics(tok_dir, tmp_path, caplog):
    config = tiny_config(tok_dir, steps=4, checkpoint_every=1, eval_every=0, keep_best=1)
    with caplog.at_level("WARNING"):
        train.train(config, tmp_path / "run")
    assert not [r for r in caplog.records if "tracked_metric" in r.getMessage()]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["3", "4"]  # keep=2 latest; none is "best" but 4


def test_when_no_checkpoint_reads_nothing_is_moved(tok_dir, tmp_path):
    workdir = tmp_path / "run"
    train.train(_constant_lr(tok_dir, 4), workdir)
    for step in ("2", "4"):
        shutil.rmtree(workdir / "checkpoints" / step / "train")
    with pytest.raises(ValueError, match=r"no checkpoint in .* could be read \(step 4: .*nothing "
                                         r"was moved"):
        train.train(_constant_lr(tok_dir, 6), workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()
                  if not p.name.startswith(".")) == ["2", "4"]


def test_a_half_written_metrics_line_does_not_block_the_resume(tok_dir, tmp_path):
    workdir = tmp_path / "run"
    train.train(_constant_lr(tok_dir, 4), workdir)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.2')  # killed mid-write
    train.train(_constant_lr(tok_dir, 6), workdir)
    steps = [r["step"] for r in _rows(workdir) if "loss" in r]
    assert steps == list(range(1, 7))


def test_a_restart_before_the_first_checkpoint_replays_no_rows(tok_dir, tmp_path):
    workdir = tmp_path / "run"
    train.train(_constant_lr(tok_dir, 3), workdir)
    shutil.rmtree(workdir / "checkpoints")  # as if killed before its first save
    train.train(_constant_lr(tok_dir, 3), workdir)
    assert [r["step"] for r in _rows(workdir) if "loss" in r] == [1, 2, 3]
