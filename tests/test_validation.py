from pathlib import Path

import numpy as np
import pytest

from blockem_trl import BlockEMConfig, BuilderConfig
from blockem_trl.demo.config import DemoConfig
from blockem_trl.kl_config import KLConfig


def test_numeric_strings_converted(tmp_path):
    # PyYAML (YAML 1.1) reads `1e3` as a string; recipes write lambdas that way.
    config = BlockEMConfig(output_dir=str(tmp_path), block_lambda="1e3", block_layer="19", use_cpu=True)
    assert config.block_lambda == 1000.0
    assert config.block_layer == 19
    assert KLConfig(output_dir=str(tmp_path), kl_lambda="0.5", use_cpu=True).kl_lambda == 0.5
    assert DemoConfig(lambdas=["1e3", 2], num_train="64").lambdas == [1000.0, 2.0]
    assert BuilderConfig(calibration_coefficients=[1, "2e1"]).calibration_coefficients == (1.0, 20.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_train": "abc"}, "DemoConfig.num_train must be an integer, got 'abc'"),
        ({"num_train": True}, "DemoConfig.num_train must be an integer, got True"),
        ({"lambdas": 3}, "DemoConfig.lambdas must be a list of numbers"),
        ({"progress": "maybe"}, "DemoConfig.progress must be true or false"),
        ({"threads": 1.5}, "DemoConfig.threads must be an integer or null"),
        ({"domains": [{"name": "x", "fil": "y.jsonl"}]}, "DomainConfig has no field 'fil'; valid fields: file"),
        ({"domains": [{"name": ["x"], "file": "y.jsonl"}]}, "DomainConfig.name must be a string"),
    ],
)
def test_demo_config_wrong_types(overrides, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig(**overrides)


def test_blocking_field_wrong_type(tmp_path):
    with pytest.raises(ValueError, match="BlockEMConfig.block_layer must be an integer or null, got 'nineteen'"):
        BlockEMConfig(output_dir=str(tmp_path), block_layer="nineteen", use_cpu=True)


def test_numpy_scalars_accepted(tmp_path):
    config = DemoConfig(random_seeds=list(np.arange(2)), lambdas=[np.float32(2)], num_train=np.int64(5))
    assert config.random_seeds == [0, 1]
    assert config.lambdas == [2.0]
    assert config.num_train == 5
    assert BlockEMConfig(output_dir=str(tmp_path), block_lambda=np.int64(3), use_cpu=True).block_lambda == 3.0


def test_string_fields_take_numbers_and_paths():
    assert DemoConfig(output_dir=2024).output_dir == "2024"
    assert DemoConfig(output_dir=Path("runs/demo")).output_dir == "runs/demo"


def test_domain_missing_file_named():
    with pytest.raises(ValueError, match="DomainConfig is missing the field 'file'"):
        DemoConfig(domains=[{"name": "x"}])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_prompts": -3}, "max_prompts must be >= 1"),
        ({"prescreen_audit": -2}, "prescreen_audit must be >= 0"),
        ({"calibration_coefficients": [float("nan")]}, "steering strengths must be finite"),
        ({"induce_coefficient": -0.5}, "steering strengths must be finite"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"min_score": float("nan")}, "min_score must be a finite number"),
        ({"min_effect": "nan"}, "min_effect must be a finite number"),
    ],
)
def test_builder_config_ranges(overrides, message):
    with pytest.raises(ValueError, match=message):
        BuilderConfig(**overrides)
