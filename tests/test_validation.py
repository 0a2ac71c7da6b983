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
        ({"domains": [{"name": 3, "file": "y.jsonl"}]}, "DomainConfig.name must be a string"),
    ],
)
def test_demo_config_wrong_types(overrides, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig(**overrides)


def test_blocking_field_wrong_type(tmp_path):
    with pytest.raises(ValueError, match="BlockEMConfig.block_layer must be an integer or null, got 'nineteen'"):
        BlockEMConfig(output_dir=str(tmp_path), block_layer="nineteen", use_cpu=True)
