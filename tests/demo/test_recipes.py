"""The YAML recipes: they load, their layer settings agree, and every arm's trainer builds on a tiny model.

GPU recipes are checked on CPU by swapping in the tiny random model and SAE; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from trl import SFTConfig, SFTTrainer

from blockem_trl import BlockEMConfig, BlockEMSFTTrainer
from blockem_trl.demo import DemoConfig
from blockem_trl.demo.arms import lora_config, random_latent_set, sft_settings
from blockem_trl.demo.pipeline import make_builder_config
from blockem_trl.hooks import layer_index_from_hook_point
from blockem_trl.kl_config import KLConfig
from blockem_trl.kl_trainer import KLSFTTrainer
from blockem_trl.latents import LatentSet
from tests.factories import make_dataset, make_model, make_sae, make_tokenizer

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("demo_*.yaml"))


def test_recipes_found():
    names = [path.name for path in RECIPES]
    assert "demo_smollm2.yaml" in names
    assert "demo_llama31_8b.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_recipe_loads(path):
    config = DemoConfig.from_yaml(path)
    assert config.domains
    assert config.lambdas
    builder = make_builder_config(config, "unused")
    assert builder.num_latents >= 1
    if config.hook_point is not None and config.sae_id is not None and config.sae_id.startswith("layer_"):
        assert layer_index_from_hook_point(config.hook_point) == int(config.sae_id.removeprefix("layer_"))


def test_paper_recipe_values():
    config = DemoConfig.from_yaml(RECIPES[[p.name for p in RECIPES].index("demo_llama31_8b.yaml")])
    assert config.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert config.sae == "goodfire-llama-3.1-8b-instruct"
    assert config.sae_id == "layer_19"
    assert config.hook_point == "model.layers.19"
    assert (config.lora_r, config.lora_alpha) == (16, 32)
    assert config.learning_rate == 7.5e-5
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps == 64
    assert config.num_train_epochs == 1
    assert config.lambda_mode == "raw"
    assert 1.3e4 in config.lambdas
    assert config.domains[0].name == "finance"


def tiny_substitute(config: DemoConfig, output_dir: Path) -> DemoConfig:
    """Keep a recipe's training settings but point it at the tiny model, on CPU, with short sequences."""
    return dataclasses.replace(config, model="tiny-llama", sae="tiny-sae", sae_id=None, hook_point="model.layers.1",
                               dtype="float32", bf16=False, gradient_checkpointing=False, max_length=32,
                               output_dir=str(output_dir), progress=False)


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_recipe_trainers_build(path, tmp_path):
    config = tiny_substitute(DemoConfig.from_yaml(path), tmp_path)
    tokenizer = make_tokenizer()
    dataset = make_dataset(8)
    sae = make_sae("standard", d_sae=48, layer=1)
    latents = LatentSet(positive=[1, 2], negative=[3], hook_point="model.layers.1")

    common = sft_settings(config, tmp_path / "arm")
    assert common["learning_rate"] == DemoConfig.from_yaml(path).learning_rate
    trainers = [
        SFTTrainer(model=make_model(), args=SFTConfig(**common), train_dataset=dataset, processing_class=tokenizer,
                   peft_config=lora_config(config)),
        KLSFTTrainer(make_model(), KLConfig(**common, kl_lambda=config.kl_lambdas[0]), train_dataset=dataset,
                     processing_class=tokenizer, peft_config=lora_config(config)),
    ]
    for latent_set in (latents, random_latent_set(latents, 48, seed=0)):
        args = BlockEMConfig(**common, block_lambda=config.lambdas[0], block_reference=config.block_reference)
        trainers.append(BlockEMSFTTrainer(make_model(), args, train_dataset=dataset, processing_class=tokenizer,
                                          peft_config=lora_config(config), latent_set=latent_set, sae=sae))
    for trainer in trainers:
        assert trainer.args.gradient_accumulation_steps == config.gradient_accumulation_steps
        assert trainer.model.peft_config["default"].r == config.lora_r
    assert trainers[-1].args.block_lambda == config.lambdas[0]
