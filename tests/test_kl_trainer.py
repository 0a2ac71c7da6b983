import pytest
import torch
import torch.nn.functional as F
from tests.factories import make_dataset, make_model, make_tokenizer
from peft import LoraConfig

from blockem_trl.kl_config import KLConfig
from blockem_trl.kl_trainer import KLSFTTrainer


def make_trainer(tmp_path, **config):
    values = dict(output_dir=str(tmp_path), bf16=False, report_to="none", save_strategy="no", max_steps=1,
                  per_device_train_batch_size=4, logging_steps=1, seed=0)
    return KLSFTTrainer(
        model=make_model(),
        args=KLConfig(**{**values, **config}),
        train_dataset=make_dataset(),
        processing_class=make_tokenizer(),
        peft_config=LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    )


def test_kl_matches_full_logits(tmp_path):
    trainer = make_trainer(tmp_path, kl_lambda=2.0)
    model = trainer.model
    model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(model, dict(batch))

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
        with model.disable_adapter():
            base_logits = model(**inputs).logits
    mask = batch["labels"][:, 1:] != -100
    p, q = F.log_softmax(logits[:, :-1][mask], -1), F.log_softmax(base_logits[:, :-1][mask], -1)
    expected = (p.exp() * (p - q)).sum(-1).mean()

    kl = trainer._metrics["train"]["kl/kl"][0]
    assert expected > 0
    assert kl == pytest.approx(expected.item(), rel=1e-4)
    assert loss.item() == pytest.approx(trainer._metrics["train"]["kl/sft_loss"][0] + 2.0 * kl, rel=1e-5)


def test_kl_trainer_trains(tmp_path):
    trainer = make_trainer(tmp_path, kl_lambda=1.0, max_steps=2)
    trainer.train()
    assert [entry["kl/kl"] for entry in trainer.state.log_history if "kl/kl" in entry][0] > 0


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_invalid_kl_lambda_rejected(tmp_path, value):
    with pytest.raises(ValueError, match=f"Invalid kl_lambda {value}"):
        KLConfig(output_dir=str(tmp_path), kl_lambda=value, bf16=False)
