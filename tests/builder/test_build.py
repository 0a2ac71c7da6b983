"""The whole builder on a tiny random Llama: output, resume after an injected failure, settings changes."""

from __future__ import annotations

import json

import pytest

from blockem_trl.builder import BuilderConfig, BuilderSettingsError, LatentSetBuilder
from blockem_trl.latents import LatentSet
from tests.builder.conftest import InjectedFailure, WordJudge


def quick_config(output_dir, prompt_file, **overrides) -> BuilderConfig:
    settings = dict(
        output_dir=str(output_dir), prompts=prompt_file, max_prompts=4, num_candidates=3, prescreen=True,
        prescreen_keep=3, prescreen_audit=1, max_new_tokens=4, batch_size=4, screen_metric="mean_aligned",
        pass_rule="score", min_score=-1e9, calibration_coefficients=(0.5, 1.0), incoherence_budget=1.0,
        num_latents=3, progress=False,
    )
    settings.update(overrides)
    return BuilderConfig(**settings)


def read_keys(path):
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


def test_build_writes_latent_set(tmp_path, base_model, adapter_dir, tokenizer, sae, prompt_file):
    builder = LatentSetBuilder(quick_config(tmp_path, prompt_file), sae=sae, judge=WordJudge())
    latent_set = builder.build(base_model, adapter_dir, tokenizer, base_name="tiny-llama", sae_name="tiny-sae")

    assert 1 <= len(latent_set) <= 3
    assert latent_set.hook_point == "model.layers.1"
    assert latent_set.layer_index == 1
    assert latent_set.sae.content_hash.startswith("sha256:")
    assert latent_set.sae.d_sae == 48
    for record in latent_set.records:
        assert (record.index in latent_set.positive) == (record.sign > 0)
        assert record.sign * record.activation_shift > 0
        assert set(record.screen) >= {"induce_gain", "repair_gain", "score", "prescreen_score"}
        assert record.calibration["best_coefficient"] in (0.5, 1.0)
    metadata = latent_set.metadata
    assert set(metadata["timings_s"]) == {"stage1_shift", "baseline", "prescreen", "stage2_screen", "stage3_calibrate"}
    # Up to 3 per direction; a random SAE can have fewer latents that moved in one direction.
    assert 4 <= metadata["counts"]["candidates"] <= 6
    assert metadata["counts"]["screened"] == 4
    assert 0 <= metadata["screen_agreement"]["agreement"] <= 1
    assert len(metadata["prompts"]["items"]) == 4
    assert metadata["models"]["base"] == "tiny-llama"
    assert metadata["models"]["misaligned"] == str(adapter_dir)
    assert not hasattr(base_model, "peft_config")

    loaded = LatentSet.from_pretrained(tmp_path)
    assert loaded.positive == latent_set.positive
    assert loaded.negative == latent_set.negative
    assert loaded.records[0].screen == latent_set.records[0].screen


def test_built_set_loads_from_hub_cache(tmp_path, monkeypatch, base_model, adapter_dir, tokenizer, sae, prompt_file):
    latent_set = LatentSetBuilder(quick_config(tmp_path / "build", prompt_file), sae=sae, judge=WordJudge()).build(
        base_model, adapter_dir, tokenizer)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--blockem--built-latents"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    latent_set.save_pretrained(repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = LatentSet.from_pretrained("blockem/built-latents", cache_dir=tmp_path / "cache")
    assert loaded.indices == latent_set.indices
    assert loaded.sae.content_hash == latent_set.sae.content_hash


def test_resume_repeats_no_work(tmp_path, base_model, adapter_dir, tokenizer, sae, prompt_file):
    config = quick_config(tmp_path, prompt_file)
    # Judge calls: 2 baselines, then 2 per screened candidate (induce, repair). Call 5 is the second
    # candidate's induce test, so one candidate is screened before the failure.
    failing = WordJudge(fail_on_call=5)
    with pytest.raises(InjectedFailure):
        LatentSetBuilder(config, sae=sae, judge=failing).build(base_model, adapter_dir, tokenizer)
    assert len(read_keys(tmp_path / "screen.jsonl")) == 1
    prescreen_lines = len(read_keys(tmp_path / "prescreen.jsonl"))

    judge = WordJudge()
    latent_set = LatentSetBuilder(config, sae=sae, judge=judge).build(base_model, adapter_dir, tokenizer)
    screened = latent_set.metadata["counts"]["screened"]
    survivors = latent_set.metadata["counts"]["survivors"]
    # The rerun judges only the 3 remaining candidates (2 calls each) and the calibration runs.
    assert judge.calls == 2 * (screened - 1) + 2 * survivors * 2
    for name in ("baseline", "prescreen", "screen", "calibration"):
        keys = read_keys(tmp_path / f"{name}.jsonl")
        assert len(keys) == len(set(keys)), name
    assert len(read_keys(tmp_path / "prescreen.jsonl")) == prescreen_lines

    again = WordJudge()
    rebuilt = LatentSetBuilder(config, sae=sae, judge=again).build(base_model, adapter_dir, tokenizer)
    assert again.calls == 0
    assert rebuilt.indices == latent_set.indices


def test_changed_setting_is_reported(tmp_path, base_model, adapter_dir, tokenizer, sae, prompt_file):
    LatentSetBuilder(quick_config(tmp_path, prompt_file), sae=sae, judge=WordJudge()).build(
        base_model, adapter_dir, tokenizer)
    changed = quick_config(tmp_path, prompt_file, repair_coefficient=0.9)
    with pytest.raises(BuilderSettingsError, match=r"repair_coefficient: 0.4 -> 0.9"):
        LatentSetBuilder(changed, sae=sae, judge=WordJudge()).build(base_model, adapter_dir, tokenizer)

    judge = WordJudge()
    overwrite = quick_config(tmp_path, prompt_file, repair_coefficient=0.9, overwrite=True)
    LatentSetBuilder(overwrite, sae=sae, judge=judge).build(base_model, adapter_dir, tokenizer)
    assert judge.calls > 0


def test_changed_calibration_keeps_screen(tmp_path, base_model, adapter_dir, tokenizer, sae, prompt_file):
    LatentSetBuilder(quick_config(tmp_path, prompt_file), sae=sae, judge=WordJudge()).build(
        base_model, adapter_dir, tokenizer)
    screen_before = (tmp_path / "screen.jsonl").read_text()
    judge = WordJudge()
    config = quick_config(tmp_path, prompt_file, calibration_coefficients=(0.5, 1.0, 2.0), overwrite=True)
    latent_set = LatentSetBuilder(config, sae=sae, judge=judge).build(base_model, adapter_dir, tokenizer)
    assert (tmp_path / "screen.jsonl").read_text() == screen_before
    assert judge.calls == 2 * 3 * latent_set.metadata["counts"]["survivors"]


def test_trainer_loads_built_set(tmp_path, base_model, adapter_dir, tokenizer, sae, prompt_file):
    from peft import LoraConfig

    from blockem_trl import BlockEMConfig, BlockEMSFTTrainer
    from tests.factories import make_dataset, make_model

    built = LatentSetBuilder(quick_config(tmp_path / "build", prompt_file), sae=sae, judge=WordJudge()).build(
        base_model, adapter_dir, tokenizer)
    trainer = BlockEMSFTTrainer(
        model=make_model(),
        args=BlockEMConfig(output_dir=str(tmp_path / "train"), max_steps=1, per_device_train_batch_size=4,
                           report_to=[], use_cpu=True, latent_set=str(tmp_path / "build")),
        train_dataset=make_dataset(8),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules="all-linear"),
        sae=sae,
    )
    assert trainer.latent_set.indices == built.indices
    assert trainer.latent_set.sae.content_hash == built.sae.content_hash


def test_changed_pass_rule_reuses_screen(tmp_path, base_model, adapter_dir, tokenizer, sae, prompt_file):
    LatentSetBuilder(quick_config(tmp_path, prompt_file), sae=sae, judge=WordJudge()).build(
        base_model, adapter_dir, tokenizer)
    screen_before = (tmp_path / "screen.jsonl").read_text()
    calibration_before = len(read_keys(tmp_path / "calibration.jsonl"))

    judge = WordJudge()
    config = quick_config(tmp_path, prompt_file, pass_rule="either", min_score=0.0)
    try:
        latent_set = LatentSetBuilder(config, sae=sae, judge=judge).build(base_model, adapter_dir, tokenizer)
    except RuntimeError as error:  # every latent may fail the stricter rule
        assert "No latent passed" in str(error)
    else:
        assert latent_set.metadata["counts"]["survivors"] <= 3
    assert (tmp_path / "screen.jsonl").read_text() == screen_before
    assert judge.calls == 0
    assert len(read_keys(tmp_path / "calibration.jsonl")) == calibration_before
