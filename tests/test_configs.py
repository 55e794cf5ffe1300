"""Config files: every committed config loads and validates, the config families resolve to the
values the separate experiment files had (a snapshot taken before they were folded), and no
config touches sys.path."""

import json
import pathlib

import pytest

from cotjax import defaults

ROOT = pathlib.Path(__file__).resolve().parents[1]
SNAPSHOT = json.loads((ROOT / "tests/data/config_snapshots.json").read_text())
# Keys added to the defaults after the snapshot (commit 01fe0f4), with their default values.
ADDED = {("train", "wandb_project"): "", ("data", "max_skipped_fraction"): 0.05,
         ("train", "max_consecutive_skips"): 10, ("train", "resume_fallback"): True,
         ("data", "train_path"): "", ("eval", "calculator"): False,
         ("eval", "faithfulness"): [], ("eval", "faithfulness_points"): 11,
         ("eval", "faithfulness_answer_tokens"): 16, ("train", "objective"): "cot",
         ("train", "reward_labels"): "hard", ("data", "labels"): "",
         ("data", "labels_validation"): 0.1, ("data", "labels_split"): "lines", ("eval", "prm"): "", ("eval", "orm"): "",
         ("eval", "prm_aggregate"): "min", ("train", "profile_steps"): 0,
         ("train", "loss_chunk"): 0, ("train", "target_logits_only"): False,
         ("eval", "beam_width"): 4, ("eval", "beam_expand"): 4,
         ("eval", "beam_steps"): 12, ("eval", "beam_step_tokens"): 96,
         ("eval", "beam_distinct"): True}
# Sections added after the snapshot, whole.
ADDED_SECTIONS = {"attention": "reference", "lora": {"rank": 0, "alpha": 16.0, "dropout": 0.0, "block": 64,
                           "targets": r"layers/(wq|wk|wv|wo|w_gate|w_up|w_down)$",
                           "quant": "none"}}
# Where each snapshotted file went.
NOW = {
    "configs/base.py": "configs/base.py",
    "configs/quickstart.py": "configs/quickstart.py",
    "configs/gsm8k_hf_large.py": "configs/gsm8k_hf_large.py",
    "configs/gsm8k_smollm2.py": "configs/gsm8k.py:recipe=full",
    "configs/gsm8k_gemma3_270m.py": "configs/gsm8k.py:model=gemma3-270m,recipe=full",
    "configs/experiments/gsm8k_cot.py": "configs/gsm8k.py",
    "configs/experiments/gsm8k_answer_only.py": "configs/gsm8k.py:mode=answer_only",
    "configs/experiments/gsm8k_gemma3_cot.py": "configs/gsm8k.py:model=gemma3-270m",
    "configs/experiments/gsm8k_gemma3_answer_only.py":
        "configs/gsm8k.py:model=gemma3-270m,mode=answer_only",
    "configs/synthetic_smollm2.py": "configs/synthetic.py",
    "configs/experiments/synthetic_cot.py": "configs/synthetic.py:recipe=experiment",
    "configs/experiments/synthetic_answer_only.py":
        "configs/synthetic.py:recipe=experiment,mode=answer_only",
}


def _resolved(spec: str) -> dict:
    out = json.loads(defaults.load_config(str(ROOT / spec)).to_json_best_effort())
    for (section, key), value in ADDED.items():
        assert out[section].pop(key) == value
    for section, value in ADDED_SECTIONS.items():
        assert out.pop(section) == value
    return out


@pytest.mark.parametrize("old", sorted(NOW))
def test_config_resolves_to_its_snapshot(old):
    assert _resolved(NOW[old]) == SNAPSHOT[old]


# Config files written after the snapshot, each with the arguments it is checked under.
NEW = {"configs/large.py": [f"configs/large.py:model={m},method={x},hardware={h}"
                            for m in ("llama3.2-1b", "qwen3-8b", "gemma3-12b")
                            for x in ("full", "lora", "qlora")
                            for h in ("gpu80", "gpu8x80", "v5e-8", "v5p-64")]}


def test_every_config_file_is_covered_and_valid():
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.py")}
    assert files == {spec.partition(":")[0] for spec in NOW.values()} | set(NEW)
    for spec in [*NOW.values(), *(s for specs in NEW.values() for s in specs)]:
        config = defaults.load_config(str(ROOT / spec))
        assert config.model and config.data.seq_len > 0
        defaults.TrainSpec.from_config(config)  # rejects unknown or inconsistent train keys


def test_no_config_touches_sys_path():
    for path in (ROOT / "configs").rglob("*.py"):
        assert "sys.path" not in path.read_text(), path


def test_config_argument_errors_name_the_key():
    with pytest.raises(ValueError, match="unknown config argument 'modle'; known: model, mode"):
        defaults.load_config(str(ROOT / "configs/gsm8k.py:modle=x"))
    with pytest.raises(ValueError, match="'mode' is not key=value"):
        defaults.load_config(str(ROOT / "configs/gsm8k.py:mode"))
    with pytest.raises(ValueError, match="recipe must be experiment or full"):
        defaults.load_config(str(ROOT / "configs/gsm8k.py:recipe=fast"))


def test_family_members_differ_only_in_their_argument():
    cot = defaults.load_config(str(ROOT / "configs/gsm8k.py")).to_dict()
    answer_only = defaults.load_config(str(ROOT / "configs/gsm8k.py:mode=answer_only")).to_dict()
    assert (cot["data"].pop("mode"), answer_only["data"].pop("mode")) == ("cot", "answer_only")
    assert cot == answer_only


def test_overrides_reach_keys_added_after_a_run_saved_its_config():
    """A run's saved config predates `eval.calculator`: overriding it still works (the key takes
    its default's place), and a mistyped key is still refused by name."""
    config = defaults.get_config()
    with config.eval.unlocked():
        del config.eval["calculator"]
    defaults.apply_overrides(config, {"eval.calculator": "true"}, where="the run's config")
    assert config.eval.calculator is True
    with pytest.raises(KeyError, match="no key 'eval.calculatr' \\(did you mean calculator\\?\\)"):
        defaults.apply_overrides(config, {"eval.calculatr": "true"}, where="the run's config")
