import pytest
import torch
from tests.factories import make_dataset, make_model, make_sae, make_tokenizer
from peft import LoraConfig

from blockem_trl import BlockEMConfig, BlockEMSFTTrainer, LatentSet, load_sae
from blockem_trl.base_cache import BASE_LATENTS_KEY, BaseLatentsCollator
from blockem_trl.sae import sae_reference

TRAINING = dict(bf16=False, report_to="none", save_strategy="no", logging_steps=1, learning_rate=1e-2, seed=0)


@pytest.fixture
def latent_set(tmp_path):
    sae = make_sae(layer=1)
    sae.save_model(tmp_path / "sae")
    return LatentSet(
        positive=[1, 2, 3, 4], negative=[5, 6, 7], hook_point="model.layers.1",
        sae=sae_reference(load_sae(tmp_path / "sae"), str(tmp_path / "sae")),
    )


def make_trainer(tmp_path, latent_set, reference, **config):
    torch.manual_seed(0)
    return BlockEMSFTTrainer(
        model=make_model(),
        args=BlockEMConfig(output_dir=str(tmp_path / reference), block_reference=reference, **{**TRAINING, **config}),
        train_dataset=make_dataset(num_rows=12),
        processing_class=make_tokenizer(),
        peft_config=LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
        latent_set=latent_set,
    )


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


@pytest.mark.parametrize(
    "config",
    [
        dict(per_device_train_batch_size=4),
        dict(per_device_train_batch_size=3, max_length=9),  # truncation and padding
        dict(per_device_train_batch_size=4, padding_free=True, max_length=None),
    ],
    ids=["padded", "truncated", "padding_free"],
)
def test_cached_penalty_equals_on_the_fly(tmp_path, latent_set, config):
    runs = {}
    for reference in ("adapter", "cached"):
        trainer = make_trainer(tmp_path, latent_set, reference, max_steps=3, **config)
        trainer.train()
        runs[reference] = trainer
    on_the_fly, cached = (logged(runs[r], "blockem/penalty") for r in ("adapter", "cached"))
    assert on_the_fly[0] > 0
    assert cached == pytest.approx(on_the_fly, rel=1e-4, abs=1e-10)
    assert logged(runs["cached"], "loss") == pytest.approx(logged(runs["adapter"], "loss"), rel=1e-5)


def test_cached_column_holds_k_values_per_token(tmp_path, latent_set):
    trainer = make_trainer(tmp_path, latent_set, "cached", max_steps=1, per_device_train_batch_size=4)
    row = trainer.train_dataset[0]
    assert len(row[BASE_LATENTS_KEY]) == len(row["input_ids"])
    assert all(len(token) == len(latent_set) for token in row[BASE_LATENTS_KEY])


def test_cached_mode_rejects_packing(tmp_path, latent_set):
    with pytest.raises(ValueError, match="packing=True merges several examples"):
        make_trainer(tmp_path, latent_set, "cached", packing=True)


def test_collator_pads_to_batch_and_checks_alignment():
    def collator(examples):
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.zeros(len(examples), width, dtype=torch.long)
        mask = torch.zeros(len(examples), width, dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, width - len(e["input_ids"]) :] = torch.tensor(e["input_ids"])  # left padding
            mask[i, width - len(e["input_ids"]) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    examples = [
        {"input_ids": [1, 2, 3], BASE_LATENTS_KEY: [[1.0], [2.0], [3.0]]},
        {"input_ids": [4], BASE_LATENTS_KEY: [[4.0]]},
    ]
    with pytest.raises(ValueError, match="does not right-pad"):
        BaseLatentsCollator(collator)([dict(e) for e in examples])
