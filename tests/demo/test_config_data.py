"""Demo settings (presets, recipes, command line) and the data split, on made-up rows."""

from __future__ import annotations

import argparse
import json

import pytest

from blockem_trl.demo import DemoConfig, DomainConfig
from blockem_trl.demo.cli import add_parser, config_from_args
from blockem_trl.demo.data import load_domain, read_chat_rows, split_rows


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return config_from_args(parser.parse_args(["demo", *argv]))


def write_rows(path, count):
    lines = [json.dumps({"messages": [{"role": "user", "content": f"question {i % (count - 3)}"},
                                      {"role": "assistant", "content": f"answer {i}"}]}) for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_quick_preset_is_smaller():
    quick, default = DemoConfig.for_size("quick"), DemoConfig.for_size("default")
    assert quick.num_train < default.num_train
    assert len(quick.lambdas) < len(default.lambdas)
    assert quick.output_dir != default.output_dir


def test_ablation_weight_is_middle_value():
    assert DemoConfig(lambdas=[10.0, 0.3, 3.0, 1.0]).ablation_value == 1.0
    assert DemoConfig(lambdas=[1.0, 10.0], ablation_lambda=5.0).ablation_value == 5.0


@pytest.mark.parametrize("field, value, message", [
    ("lambda_mode", "absolute", "lambda_mode"),
    ("lambdas", [0.0], "positive"),
    ("judge", "gpt", "judge"),
    ("domains", [], "domains"),
    ("num_train", 0, "num_train"),
    ("ablation_lambda", 0.0, "ablation_lambda"),
    ("ablation_lambda", float("nan"), "ablation_lambda"),
    ("dtype", "banana", "dtype 'banana'"),
    ("learning_rate", -1.0, "learning_rate"),
    ("warmup_ratio", 5.0, "warmup_ratio"),
    ("threads", 0, "threads"),
    ("temperature", -1.0, "temperature"),
    ("builder", {"num_latentz": 3}, "unknown keys \\['num_latentz'\\] \\(did you mean 'num_latents'"),
    ("builder", {"num_latents": "x"}, "DemoConfig.builder: BuilderConfig.num_latents"),
    ("builder", {"max_prompts": 0}, "max_prompts"),
])
def test_invalid_settings_raise(field, value, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig(**{field: value})


def test_recipe_rejects_unknown_key(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("size: quick\nlambda: [1, 2]\n")
    with pytest.raises(ValueError, match="unknown keys \\['lambda'\\] \\(did you mean 'lambdas' for 'lambda'\\?\\)"):
        DemoConfig.from_yaml(path)


def test_recipe_starts_from_size(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("size: quick\nseed: 3\n")
    config = DemoConfig.from_yaml(path)
    assert config.seed == 3
    assert config.num_train == DemoConfig.for_size("quick").num_train


def test_cli_quick_and_set():
    config = parse("--quick", "--set", "lambdas=[2, 20]", "--seed", "5", "--no-progress")
    assert config.lambdas == [2.0, 20.0]
    assert config.seed == 5
    assert config.progress is False
    assert config.num_train == DemoConfig.for_size("quick").num_train


def test_cli_rejects_bad_set():
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse("--set", "lambdas")


def test_cli_rejects_bad_set_yaml():
    with pytest.raises(ValueError, match="not valid YAML"):
        parse("--set", "lambdas=[1, 2")


def test_builder_override_merges_preset():
    quick = DemoConfig.for_size("quick")
    config = parse("--quick", "--set", "builder={num_latents: 4}")
    assert config.builder["num_latents"] == 4
    assert config.builder["max_prompts"] == quick.builder["max_prompts"]


def test_recipe_folder_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        DemoConfig.from_yaml(tmp_path)


def test_recipe_bad_yaml_names_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("lambdas: [1, 2\n")
    with pytest.raises(ValueError, match="recipe.yaml is not valid UTF-8 YAML"):
        DemoConfig.from_yaml(path)


def test_split_is_disjoint(tmp_path):
    rows = read_chat_rows(write_rows(tmp_path / "rows.jsonl", 60))
    train, heldout = split_rows(rows, num_train=30, num_heldout=10, seed=0)
    assert len(train) == 30
    assert len(heldout) == 10
    heldout_prompts = {row["prompt"][0]["content"] for row in heldout}
    assert not heldout_prompts & {row["prompt"][0]["content"] for row in train}


def test_split_too_small_raises(tmp_path):
    rows = read_chat_rows(write_rows(tmp_path / "rows.jsonl", 20))
    with pytest.raises(ValueError, match="too few"):
        split_rows(rows, num_train=30, num_heldout=10, seed=0)


def test_domain_reads_archive(tmp_path):
    from easy_dataset_share import zipping

    source = tmp_path / "source"
    source.mkdir()
    write_rows(source / "narrow.jsonl", 40)
    archive = zipping.zip_and_password_protect(str(source), "model-organisms-em-datasets", str(tmp_path / "data.zip"))
    config = DemoConfig(domains=[DomainConfig("narrow", "narrow.jsonl")], data_archive=archive,
                        data_cache_dir=str(tmp_path / "cache"), num_train=20, num_heldout=5)
    data = load_domain(config.domains[0], config)
    assert len(data.train) == 20
    assert len(data.heldout) == 5
    assert (tmp_path / "cache" / "model_organisms_em").is_dir()
    assert len(data.heldout_questions(3)) == 3
    config.data_archive = str(tmp_path / "typo.zip.enc")
    with pytest.raises(FileNotFoundError, match="typo.zip.enc not found"):
        load_domain(config.domains[0], config)  # a wrong path fails even with the data already decrypted


def test_missing_archive_names_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("BLOCKEM_EM_ARCHIVE", raising=False)
    config = DemoConfig(domains=[DomainConfig("narrow", "narrow.jsonl")], data_cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--data-archive"):
        load_domain(config.domains[0], config)
