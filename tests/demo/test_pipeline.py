"""The whole demo pipeline on a tiny random Llama: every arm, the report, and resuming."""

from __future__ import annotations

import json
from pathlib import Path

from blockem_trl.demo import DemoPipeline, run_demo
from blockem_trl.demo.stages import MARKER_FILENAME
from blockem_trl.latents import LatentSet

EXPECTED_ARMS = {"base", "plain", "blockem_l1", "blockem_l10", "kl_0.5", "random_k_s0", "top_delta"}


def test_pipeline_writes_report(tiny_config, tiny_components):
    config = tiny_config()
    report = run_demo(config, tiny_components)

    arms = {row["arm"] for row in report["rows"]}
    assert arms == EXPECTED_ARMS
    rows = {row["arm"]: row for row in report["rows"]}
    for row in rows.values():
        assert 0 <= row["misalignment_rate"] <= 1
        assert len(row["misalignment_ci"]) == 2
        assert row["heldout_loss"] > 0
        assert row["indomain_judged_metric"] == "financial_risk"
    assert rows["plain"]["lambda"] == 0.0
    assert rows["plain"]["heldout_loss_change_vs_plain"] == 0.0

    mapping = report["lambda_mapping"]["tiny"]
    assert mapping["p_plain"] > 0
    expected_raw = 10.0 * mapping["sft_loss_plain"] / mapping["p_plain"]
    assert abs(rows["blockem_l10"]["lambda"] - expected_raw) < 1e-9 * expected_raw
    assert rows["blockem_l10"]["lambda_rel"] == 10.0
    # The ablations use the middle weight of the sweep (here the lower of two).
    assert rows["random_k_s0"]["lambda"] == rows["blockem_l1"]["lambda"]
    assert rows["top_delta"]["lambda"] == rows["blockem_l1"]["lambda"]

    output = Path(config.output_dir)
    for name in ("report.md", "report.json", "safety_vs_quality.png"):
        assert (output / name).is_file(), name
    markdown = (output / "report.md").read_text()
    for label in ("plain SFT", "BLOCK-EM", "KL to base", "random K", "Top-Delta", "base model"):
        assert label in markdown, label
    card = (Path(rows["blockem_l1"]["adapter_dir"]) / "README.md").read_text()
    assert "model.layers.1" in card


def test_random_and_top_delta_sets(tiny_config, tiny_components):
    config = tiny_config(kl_lambdas=[], lambdas=[1.0])
    run_demo(config, tiny_components)

    arms = Path(config.output_dir) / "arms" / "tiny"
    k = LatentSet.from_pretrained(Path(config.output_dir) / "latents")
    random_set = LatentSet.from_pretrained(arms / "random_k_s0")
    top_set = LatentSet.from_pretrained(arms / "top_delta")
    assert len(random_set.positive) == len(k.positive)
    assert len(random_set.negative) == len(k.negative)
    assert not set(random_set.indices) & set(k.indices)
    assert len(top_set.positive) == len(k.positive)
    assert len(top_set.negative) == len(k.negative)


def test_rerun_skips_finished_stages(tiny_config, tiny_components, monkeypatch):
    config = tiny_config(kl_lambdas=[], random_seeds=[], top_delta=False, lambdas=[1.0])
    first = run_demo(config, tiny_components)

    import blockem_trl.demo.pipeline as pipeline

    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(pipeline, "train_arm", fail)
    monkeypatch.setattr(pipeline, "evaluate_misalignment", fail)
    monkeypatch.setattr(pipeline, "measure_plain_penalty", fail)
    second = DemoPipeline(config, tiny_components).run()
    assert [row["misalignment_rate"] for row in second["rows"]] == [row["misalignment_rate"] for row in first["rows"]]


def test_changed_lambda_retrains_only_that_arm(tiny_config, tiny_components, monkeypatch):
    config = tiny_config(kl_lambdas=[], random_seeds=[], top_delta=False, lambdas=[1.0])
    run_demo(config, tiny_components)

    import blockem_trl.demo.pipeline as pipeline

    trained = []
    original = pipeline.train_arm

    def recording(arm, *args, **kwargs):
        trained.append(arm.name)
        return original(arm, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_arm", recording)
    run_demo(tiny_config(kl_lambdas=[], random_seeds=[], top_delta=False, lambdas=[1.0, 3.0]), tiny_components)
    assert trained == ["blockem_l3"]


def test_changed_reference_keeps_plain_arm(tiny_config, tiny_components, monkeypatch):
    settings = dict(kl_lambdas=[], random_seeds=[], top_delta=False, lambdas=[1.0])
    run_demo(tiny_config(**settings), tiny_components)

    import blockem_trl.demo.pipeline as pipeline

    trained = []
    original = pipeline.train_arm

    def recording(arm, *args, **kwargs):
        trained.append(arm.name)
        return original(arm, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_arm", recording)
    run_demo(tiny_config(block_reference="model", **settings), tiny_components)
    assert trained == ["blockem_l1"]


def test_stage_marker_records_hash(tiny_config, tiny_components):
    config = tiny_config(kl_lambdas=[], random_seeds=[], top_delta=False, lambdas=[1.0])
    run_demo(config, tiny_components)

    marker = json.loads((Path(config.output_dir) / "arms" / "tiny" / "plain" / MARKER_FILENAME).read_text())
    assert len(marker["settings_hash"]) == 16
    assert marker["outputs"] == ["adapter_config.json"]
    assert marker["seconds"] > 0
