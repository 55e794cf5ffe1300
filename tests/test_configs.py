"""Every shipped config loads through the CLI's loader and is a valid run description."""

from pathlib import Path

import pytest

from cotjax import cli, train

CONFIGS = sorted(str(p) for p in Path("configs").rglob("*.py"))


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_its_train_section_is_valid(path):
    config = cli.load_config(path)
    assert config.model and config.data.seq_len > 0
    train.TrainSpec.from_config(config)  # rejects unknown or inconsistent train keys


@pytest.mark.parametrize("experiment", ["synthetic", "gsm8k", "gsm8k_gemma3"])
def test_experiment_pairs_differ_only_in_mode(experiment):
    cot = cli.load_config(f"configs/experiments/{experiment}_cot.py").to_dict()
    answer_only = cli.load_config(f"configs/experiments/{experiment}_answer_only.py").to_dict()
    assert (cot["data"].pop("mode"), answer_only["data"].pop("mode")) == ("cot", "answer_only")
    assert cot == answer_only  # same model, problems, optimiser and row shape
