"""`LatentSetBuilder` as a TrainerCallback on a LoRA SFT run, and the `blockem build-latents` parser."""

from __future__ import annotations

import argparse

from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from blockem_trl.builder import BuilderConfig, LatentSetBuilder
from blockem_trl.builder.cli import add_parser, config_from_args
from blockem_trl.latents import LatentSet
from tests.builder.conftest import WordJudge
from tests.factories import make_dataset


def test_callback_builds_after_training(tmp_path, base_model, tokenizer, sae, prompt_file):
    config = BuilderConfig(prompts=prompt_file, max_prompts=3, num_candidates=2, max_new_tokens=3,
                           pass_rule="score", min_score=-1e9, calibration_coefficients=(0.5,),
                           incoherence_budget=1.0, progress=False)
    builder = LatentSetBuilder(config, sae=sae, judge=WordJudge())
    trainer = SFTTrainer(
        model=base_model,
        args=SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                       report_to=[], save_strategy="no", logging_steps=1, use_cpu=True),
        train_dataset=make_dataset(8),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules="all-linear"),
        callbacks=[builder],
    )
    trainer.train()

    latent_set = LatentSet.from_pretrained(tmp_path)
    assert len(latent_set) >= 1
    assert latent_set.hook_point == "model.layers.1"
    assert (tmp_path / "latent_discovery" / "screen.jsonl").is_file()
    assert builder.latent_set.indices == latent_set.indices
    # The trained adapter stays on the model: the callback only turned it off for the base passes.
    assert hasattr(trainer.model, "peft_config")


def parse(argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_quick_preset_with_overrides(tmp_path):
    args = parse(["build-latents", "--misaligned", "adapter", "--output-dir", str(tmp_path), "--quick",
                  "--num-candidates", "7", "--calibration-coefficients", "0.3", "0.6", "--no-prescreen"])
    assert args.func.__name__ == "run"
    config = config_from_args(args)
    assert config.num_candidates == 7
    assert config.calibration_coefficients == (0.3, 0.6)
    assert config.prescreen is False
    assert config.prescreen_keep is None
    assert config.max_new_tokens == BuilderConfig.quick().max_new_tokens
    assert config.output_dir == str(tmp_path)


def test_cli_defaults_match_config(tmp_path):
    config = config_from_args(parse(["build-latents", "--misaligned", "m", "--output-dir", str(tmp_path)]))
    assert config == BuilderConfig(output_dir=str(tmp_path))
