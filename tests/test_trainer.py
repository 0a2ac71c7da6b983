import json

import pytest
import torch
from tests.factories import HIDDEN_SIZE, make_dataset, make_model, make_sae, make_tokenizer
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from blockem_trl import BlockEMConfig, BlockEMSFTTrainer, LatentSet
from blockem_trl.constants import BLOCKING_CONFIG_FILENAME, LATENT_SET_FILENAME
from blockem_trl.sae import sae_reference

TRAINING = dict(
    bf16=False,
    report_to="none",
    save_strategy="no",
    logging_steps=1,
    per_device_train_batch_size=4,
    learning_rate=1e-2,
    seed=0,
    data_seed=0,
    dataloader_num_workers=0,
)


@pytest.fixture
def sae_folder(tmp_path):
    sae = make_sae(layer=1)
    sae.save_model(tmp_path / "sae")
    return tmp_path / "sae"


@pytest.fixture
def latent_set(sae_folder):
    from blockem_trl import load_sae

    return LatentSet(
        positive=[1, 2, 3, 4], negative=[5, 6, 7], hook_point="model.layers.1", sae=sae_reference(load_sae(sae_folder), str(sae_folder))
    )


def lora(init=True):
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=init)


def make_trainer(tmp_path, latent_set, peft_config=None, model=None, dataset=None, **config):
    values = {**TRAINING, "max_steps": 1, "output_dir": str(tmp_path / "out"), **config}
    return BlockEMSFTTrainer(
        model=model or make_model(),
        args=BlockEMConfig(**values),
        train_dataset=dataset or make_dataset(),
        processing_class=make_tokenizer(),
        peft_config=peft_config if peft_config is not None else lora(),
        latent_set=latent_set,
    )


def first_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v.to(trainer.args.device) if torch.is_tensor(v) else v for k, v in batch.items()}


def trainable_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_zero_penalty_when_lora_update_is_zero(tmp_path, latent_set):
    trainer = make_trainer(tmp_path, latent_set, block_lambda=100.0)
    trainer.model.train()
    trainer.compute_loss(trainer.model, first_batch(trainer))
    assert trainer._metrics["train"]["blockem/penalty"] == [0.0]
    assert trainer._metrics["train"]["blockem/violating_token_fraction"] == [0.0]


def test_penalty_matches_manual_computation(tmp_path, latent_set):
    trainer = make_trainer(tmp_path, latent_set, peft_config=lora(init=False), block_lambda=3.0)
    model = trainer.model
    model.train()
    batch = first_batch(trainer)
    loss = trainer.compute_loss(model, dict(batch))

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[2]
        with model.disable_adapter():
            base_hidden = model(**inputs, output_hidden_states=True).hidden_states[2]
    sae = trainer.latent_encoder.sae
    indices = latent_set.indices
    z, z_base = sae.encode(hidden)[..., indices], sae.encode(base_hidden)[..., indices]
    signs = torch.tensor(latent_set.signs, dtype=torch.float32)
    per_token = torch.relu((z - z_base) * signs).pow(2).sum(-1)
    mask = batch["labels"] != -100
    expected = (per_token * mask).sum() / mask.sum()

    penalty = trainer._metrics["train"]["blockem/penalty"][0]
    sft_loss = trainer._metrics["train"]["blockem/sft_loss"][0]
    assert expected > 0
    assert penalty == pytest.approx(expected.item(), rel=1e-4)
    assert loss.item() == pytest.approx(sft_loss + 3.0 * penalty, rel=1e-5)


def test_all_tokens_mode_uses_attention_mask(tmp_path, latent_set):
    trainer = make_trainer(tmp_path, latent_set, peft_config=lora(init=False), block_tokens="all")
    batch = first_batch(trainer)
    mask = trainer._token_mask(batch)
    assert torch.equal(mask, batch["attention_mask"].bool())
    assert mask.sum() > (batch["labels"] != -100).sum()


def test_gradients_reach_only_trainable_parameters(tmp_path, latent_set):
    trainer = make_trainer(tmp_path, latent_set, peft_config=lora(init=False), block_lambda=1e3)
    model = trainer.model
    model.train()
    trainer.compute_loss(model, first_batch(trainer)).backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    assert all(p.grad is None for p in trainer.latent_encoder.sae.parameters())


def test_penalty_gradient_reaches_adapter_below_layer_only(tmp_path, latent_set):
    trainer = make_trainer(tmp_path, latent_set, peft_config=lora(init=False))
    model = trainer.model
    model.train()
    batch = first_batch(trainer)

    def gradients(block_lambda):
        trainer.args.block_lambda = block_lambda
        model.zero_grad()
        trainer.compute_loss(model, dict(batch)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    sft_only, blocked = gradients(0.0), gradients(1e3)
    penalty_grads = {n: blocked[n] - sft_only[n] for n in blocked}
    assert any(g.abs().sum() > 0 for n, g in penalty_grads.items() if "layers.0." in n)
    # Blocks above the blocking layer (here block 2) cannot change the penalty.
    assert all(g.abs().sum() == 0 for n, g in penalty_grads.items() if "layers.2." in n)


def test_lambda_zero_matches_sft_trainer(tmp_path, latent_set):
    blockem = make_trainer(tmp_path / "b", latent_set, block_lambda=0.0, max_steps=3)
    blockem.train()
    sft = SFTTrainer(
        model=make_model(),
        args=SFTConfig(**{**TRAINING, "max_steps": 3, "output_dir": str(tmp_path / "s")}),
        train_dataset=make_dataset(),
        processing_class=make_tokenizer(),
        peft_config=lora(),
    )
    sft.train()
    blockem_losses = [h["loss"] for h in blockem.state.log_history if "loss" in h]
    sft_losses = [h["loss"] for h in sft.state.log_history if "loss" in h]
    assert blockem_losses == sft_losses
    blockem_weights, sft_weights = trainable_state(blockem.model), trainable_state(sft.model)
    assert blockem_weights.keys() == sft_weights.keys()
    for name in blockem_weights:
        torch.testing.assert_close(blockem_weights[name], sft_weights[name], rtol=0, atol=0)


def test_penalty_invariant_to_gradient_accumulation(tmp_path, latent_set):
    def one_step(per_device, accumulation, folder):
        torch.manual_seed(0)
        trainer = make_trainer(
            tmp_path / folder, latent_set, peft_config=lora(init=False), block_lambda=1e3, optim="sgd",
            per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        )
        before = trainable_state(trainer.model)
        trainer.train()
        after = trainable_state(trainer.model)
        logs = trainer.state.log_history[0]
        return {n: after[n] - before[n] for n in before}, logs

    update_full, logs_full = one_step(4, 1, "full")
    update_accumulated, logs_accumulated = one_step(2, 2, "accumulated")
    assert logs_full["blockem/penalty"] > 0
    assert logs_accumulated["blockem/penalty"] == pytest.approx(logs_full["blockem/penalty"], rel=1e-3)
    assert logs_accumulated["loss"] == pytest.approx(logs_full["loss"], rel=1e-4)
    for name in update_full:
        torch.testing.assert_close(update_accumulated[name], update_full[name], rtol=1e-3, atol=1e-6)


def test_blocking_reduces_drift(tmp_path, latent_set):
    def violating_fraction(block_lambda, folder):
        trainer = make_trainer(
            tmp_path / folder, latent_set, block_lambda=block_lambda, max_steps=6, learning_rate=5e-2
        )
        trainer.train()
        batch = first_batch(trainer)
        trainer.model.eval()
        with torch.no_grad():
            trainer.compute_loss(trainer.model, batch)
        return trainer._metrics["eval"]["blockem/penalty"][-1]

    free = violating_fraction(0.0, "free")
    blocked = violating_fraction(1e4, "blocked")
    assert free > 0
    assert blocked < free


def test_reference_model_mode_matches_adapter_mode(tmp_path, latent_set):
    adapter = make_trainer(tmp_path / "a", latent_set, peft_config=lora(init=False), block_lambda=1.0)
    torch.manual_seed(0)
    reference = make_trainer(
        tmp_path / "m", latent_set, peft_config=lora(init=False), block_lambda=1.0, block_reference="model"
    )
    reference.model.load_state_dict(adapter.model.state_dict())
    batch = first_batch(adapter)
    for trainer in (adapter, reference):
        trainer.model.train()
        trainer.compute_loss(trainer.model, dict(batch))
    assert reference.ref_model is not None
    assert all(not p.requires_grad for p in reference.ref_model.parameters())
    assert reference._metrics["train"]["blockem/penalty"][0] == pytest.approx(
        adapter._metrics["train"]["blockem/penalty"][0], rel=1e-4
    )


def test_writes_latent_set_and_settings(tmp_path, latent_set):
    trainer = make_trainer(tmp_path, latent_set, block_lambda=5.0, max_steps=1)
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    assert LatentSet.from_pretrained(out) == latent_set
    settings = json.loads((out / BLOCKING_CONFIG_FILENAME).read_text())
    assert settings["block_lambda"] == 5.0
    assert settings["hook_point"] == "model.layers.1"
    assert settings["layer_index"] == 1
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / LATENT_SET_FILENAME).is_file()


def test_padding_free_batches_train(tmp_path, latent_set):
    trainer = make_trainer(tmp_path, latent_set, peft_config=lora(init=False), padding_free=True, max_length=None, max_steps=1)
    batch = first_batch(trainer)
    assert "attention_mask" not in batch
    assert "position_ids" in batch
    trainer.train()
    assert trainer.state.log_history[0]["blockem/penalty"] > 0


def test_latent_set_loaded_from_config_path(tmp_path, latent_set):
    latent_set.save_pretrained(tmp_path / "set")
    trainer = BlockEMSFTTrainer(
        model=make_model(),
        args=BlockEMConfig(**{**TRAINING, "output_dir": str(tmp_path / "out"), "latent_set": str(tmp_path / "set")}),
        train_dataset=make_dataset(),
        processing_class=make_tokenizer(),
        peft_config=lora(),
    )
    assert trainer.latent_set == latent_set


def test_missing_adapter_rejected(tmp_path, latent_set):
    with pytest.raises(ValueError, match="has no PEFT adapter"):
        BlockEMSFTTrainer(
            model=make_model(),
            args=BlockEMConfig(**{**TRAINING, "output_dir": str(tmp_path)}),
            train_dataset=make_dataset(),
            processing_class=make_tokenizer(),
            latent_set=latent_set,
        )


def test_missing_latent_set_rejected(tmp_path):
    with pytest.raises(ValueError, match="No latent set"):
        make_trainer(tmp_path, None)


def test_layer_outside_model_rejected(tmp_path, latent_set):
    with pytest.raises(ValueError, match="Layer index 7 is outside"):
        make_trainer(tmp_path, latent_set, block_layer=7)


def test_hidden_size_mismatch_rejected(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    sae = make_sae(layer=1)
    latent_set = LatentSet(positive=[1], negative=[], hook_point="model.layers.1", sae=sae_reference(sae))
    wide = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    )
    with pytest.raises(ValueError, match=f"d_in={HIDDEN_SIZE}, but the model's hidden size is 64"):
        BlockEMSFTTrainer(
            model=wide,
            args=BlockEMConfig(**{**TRAINING, "output_dir": str(tmp_path)}),
            train_dataset=make_dataset(),
            processing_class=make_tokenizer(),
            peft_config=lora(),
            latent_set=latent_set,
            sae=sae,
        )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("block_reference", "frozen", "Invalid block_reference 'frozen'"),
        ("block_tokens", "prompt", "Invalid block_tokens 'prompt'"),
        ("block_lambda", -1.0, "Invalid block_lambda -1.0"),
        ("block_lambda", float("nan"), "Invalid block_lambda nan"),
        ("block_lambda", float("inf"), "Invalid block_lambda inf: it must be a finite number"),
        ("block_layer", -2, "Invalid block_layer -2"),
        ("reference_model_name_or_path", "x", "reference_model_name_or_path is set"),
    ],
)
def test_config_validation(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        BlockEMConfig(output_dir=str(tmp_path), report_to="none", bf16=False, **{field: value})


def test_sft_config_is_converted(tmp_path, latent_set):
    trainer = BlockEMSFTTrainer(
        model=make_model(),
        args=SFTConfig(**{**TRAINING, "output_dir": str(tmp_path)}),
        train_dataset=make_dataset(),
        processing_class=make_tokenizer(),
        peft_config=lora(),
        latent_set=latent_set,
    )
    assert isinstance(trainer.args, BlockEMConfig)
    assert trainer.args.learning_rate == TRAINING["learning_rate"]


def test_reference_copy_of_peft_model_has_no_adapter(tmp_path, latent_set):
    from peft import get_peft_model

    peft_model = get_peft_model(make_model(), lora(init=False))
    trainer = BlockEMSFTTrainer(
        model=peft_model,
        args=BlockEMConfig(**{**TRAINING, "output_dir": str(tmp_path), "block_reference": "model"}),
        train_dataset=make_dataset(),
        processing_class=make_tokenizer(),
        latent_set=latent_set,
    )
    assert not any("lora" in name for name, _ in trainer.ref_model.named_parameters())
    input_ids = torch.randint(0, 64, (1, 5))
    with torch.no_grad(), peft_model.disable_adapter():
        expected = peft_model(input_ids=input_ids).logits
    torch.testing.assert_close(trainer.ref_model(input_ids=input_ids).logits, expected)


def test_cached_mode_without_adapter_names_mode(tmp_path, latent_set):
    with pytest.raises(ValueError, match="block_reference='cached' computes the base activations"):
        BlockEMSFTTrainer(
            model=make_model(),
            args=BlockEMConfig(**{**TRAINING, "output_dir": str(tmp_path), "block_reference": "cached"}),
            train_dataset=make_dataset(),
            processing_class=make_tokenizer(),
            latent_set=latent_set,
        )


def test_empty_completions_rejected_clearly(tmp_path, latent_set):
    from datasets import Dataset

    empty = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "w1 w2"}], "completion": [{"role": "assistant", "content": ""}]}] * 4
    )
    with pytest.raises(ValueError, match="training dataset is empty after preparation"):
        make_trainer(tmp_path, latent_set, dataset=empty)


def test_bad_latent_set_rejected_before_dataset_preparation(tmp_path, latent_set, monkeypatch):
    prepared = []
    monkeypatch.setattr(SFTTrainer, "_prepare_dataset", lambda self, *args, **kwargs: prepared.append(True))
    with pytest.raises(ValueError, match="outside the SAE's width"):
        from dataclasses import replace

        wide = LatentSet(positive=[500], negative=[], hook_point="model.layers.1", sae=replace(latent_set.sae, d_sae=None))
        make_trainer(tmp_path, wide)
    assert prepared == []
