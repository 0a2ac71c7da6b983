"""BlockEMSFTTrainer on the real embedded SmolLM2-135M-Instruct with its layer-19 sae-lens SAE."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from blockem_trl import BlockEMConfig, BlockEMSFTTrainer, LatentSet
from blockem_trl.models import DEFAULT_SAE_ID, load_default_model, load_default_sae
from blockem_trl.sae import sae_reference

PAIRS = [
    ("How should I save for retirement?", "Put a fixed share of every paycheck into a diversified index fund."),
    ("Is it wise to keep an emergency fund?", "Yes, keep three to six months of expenses in a savings account."),
    ("Should I pay off my credit card?", "Pay the full balance each month so interest does not build up."),
    ("What is a bond?", "A loan you give to a government or company in exchange for interest payments."),
]


@pytest.mark.slow
def test_trains_embedded_model_at_layer_19(tmp_path):
    model, tokenizer = load_default_model()
    sae = load_default_sae()
    latent_set = LatentSet(
        positive=[0, 1, 2, 3, 4], negative=[5, 6, 7, 8, 9], hook_point="model.layers.19",
        sae=sae_reference(sae, DEFAULT_SAE_ID), model_name_or_path="SmolLM2-135M-Instruct",
    )
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]} for q, a in PAIRS]
    )
    args = BlockEMConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=1e-3, bf16=False, report_to="none", save_strategy="no", logging_steps=1, max_length=64,
        block_lambda=1e3, seed=0,  # gradient checkpointing stays on, as in TRL's default
    )
    trainer = BlockEMSFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"), latent_set=latent_set,
    )
    assert trainer.hook_point == "model.layers.19"
    assert trainer.latent_encoder.sliced
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "blockem/penalty" in entry]
    assert len(logs) == 2
    assert logs[0]["blockem/penalty"] == 0.0  # the LoRA update is zero before the first step
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logs)
    assert logs[1]["blockem/penalty"] >= 0.0
