import json

import pytest

from blockem_trl import LatentRecord, LatentSet, LatentSetError, SAEReference
from blockem_trl.constants import LATENT_SET_FILENAME


def make_latent_set(**overrides) -> LatentSet:
    values = dict(
        positive=[3, 17],
        negative=[5],
        hook_point="model.layers.19",
        sae=SAEReference(path="some/sae", d_sae=64, content_hash="sha256:abc", architecture="standard", d_in=32),
        model_name_or_path="tiny",
        records=[LatentRecord(index=3, sign=1, activation_shift=0.25, screen={"repair_gain": 0.1})],
        metadata={"prompts": ["hi"]},
    )
    values.update(overrides)
    return LatentSet(**values)


def test_round_trip_through_folder(tmp_path):
    latents = make_latent_set()
    path = latents.save_pretrained(tmp_path)
    assert path.name == LATENT_SET_FILENAME
    loaded = LatentSet.from_pretrained(tmp_path)
    assert loaded == latents
    assert LatentSet.from_pretrained(path) == latents


def test_layer_index_follows_hook_point():
    latents = make_latent_set()
    assert latents.layer_index == 19
    assert latents.indices == [3, 17, 5]
    assert latents.signs == [1, 1, -1]
    assert make_latent_set(hook_point="blocks.7.hook_resid_post").layer_index == 7


def test_saved_file_states_convention(tmp_path):
    make_latent_set().save_pretrained(tmp_path)
    data = json.loads((tmp_path / LATENT_SET_FILENAME).read_text())
    assert data["schema_version"] == 1
    assert "0-based" in data["layer_convention"]
    assert data["hook_point"] == "model.layers.19"


def test_overlapping_sets_rejected():
    with pytest.raises(LatentSetError, match=r"\[5\] are in both K\+ and K-"):
        make_latent_set(positive=[5, 6], negative=[5])


def test_index_outside_sae_width_rejected():
    with pytest.raises(LatentSetError, match="outside the SAE's width of 64"):
        make_latent_set(positive=[64])
    with pytest.raises(LatentSetError, match="width of 10"):
        make_latent_set().validate(d_sae=10)


@pytest.mark.parametrize("bad", [[-1], ["x"], [1.5], [1.0], ["1"], [True], [float("inf")]])
def test_invalid_index_rejected(bad):
    with pytest.raises(LatentSetError):
        make_latent_set(positive=bad)


def test_empty_and_duplicate_sets_rejected():
    with pytest.raises(LatentSetError, match="empty"):
        make_latent_set(positive=[], negative=[])
    with pytest.raises(LatentSetError, match="more than once"):
        make_latent_set(positive=[3, 3])


def test_corrupt_file_rejected(tmp_path):
    (tmp_path / LATENT_SET_FILENAME).write_text("{not json")
    with pytest.raises(LatentSetError, match="corrupt"):
        LatentSet.from_pretrained(tmp_path)


def test_unknown_schema_version_rejected(tmp_path):
    make_latent_set().save_pretrained(tmp_path)
    file = tmp_path / LATENT_SET_FILENAME
    data = json.loads(file.read_text())
    data["schema_version"] = 99
    file.write_text(json.dumps(data))
    with pytest.raises(LatentSetError, match="schema_version 99"):
        LatentSet.from_pretrained(tmp_path)


def test_foreign_json_rejected(tmp_path):
    (tmp_path / LATENT_SET_FILENAME).write_text(json.dumps({"positive": [1]}))
    with pytest.raises(LatentSetError, match="not a blockem_trl latent set"):
        LatentSet.from_pretrained(tmp_path)


def test_folder_without_file_rejected(tmp_path):
    with pytest.raises(LatentSetError, match="No latent_set.json"):
        LatentSet.from_pretrained(tmp_path)


def test_missing_hub_repo_offline_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LatentSetError, match="not a local file or folder, and as a Hub repo id it is not in the local"):
        LatentSet.from_pretrained("some-org/no-such-latent-set", cache_dir=tmp_path)


def test_model_card_lists_sets():
    card = make_latent_set().model_card()
    assert "[3, 17]" in card
    assert "model.layers.19" in card


def test_loads_from_hub_cache_offline(monkeypatch, tmp_path):
    # The layout huggingface_hub writes: models--{org}--{name}/refs/main and snapshots/{commit}/{file}.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--blockem--test-latents"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    make_latent_set().save_pretrained(repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = LatentSet.from_pretrained("blockem/test-latents", cache_dir=tmp_path)
    assert loaded.positive == [3, 17]


def test_indices_must_be_a_list(tmp_path):
    make_latent_set().save_pretrained(tmp_path)
    file = tmp_path / LATENT_SET_FILENAME
    data = json.loads(file.read_text())
    data["positive"] = "12"
    file.write_text(json.dumps(data))
    with pytest.raises(LatentSetError, match="'positive' must be a list of latent indices"):
        LatentSet.from_pretrained(tmp_path)


def write_edited(tmp_path, edit) -> str:
    """Save a valid latent set, apply ``edit`` to its JSON data, write it back and return the file path."""
    path = make_latent_set().save_pretrained(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(layer_index="19"), r"Invalid layer_index '19' \(str\): it must be an integer"),
        (lambda d: d.update(layer_index=True), r"Invalid layer_index True \(bool\)"),
        (lambda d: d.update(layer_index=19.0), r"Invalid layer_index 19.0 \(float\)"),
        (lambda d: d.update(layer_index=-1), r"Invalid layer_index -1 \(int\): it must be an integer of at least 0"),
        (lambda d: d.update(schema_version="1"), r"invalid schema_version '1' \(str\): it must be a positive integer"),
        (lambda d: d.update(schema_version=True), r"invalid schema_version True \(bool\)"),
        (lambda d: d.update(hook_point="layer19"), "Invalid hook point 'layer19'"),
        (lambda d: d.update(hook_point=19), r"Invalid hook_point 19 \(int\)"),
        (lambda d: d.pop("hook_point"), "missing field 'hook_point'"),
        (lambda d: d.update(model_name_or_path=3), r"Invalid model_name_or_path 3 \(int\)"),
        (lambda d: d.update(metadata=[1]), r"Invalid metadata \[1\] \(list\): it must be a mapping"),
        (lambda d: d["sae"].update(d_sae="48"), r"sae: Invalid d_sae '48' \(str\): it must be an integer of at least 1"),
        (lambda d: d["sae"].update(d_in=0), r"sae: Invalid d_in 0 \(int\)"),
        (lambda d: d["sae"].update(path=5), r"sae: Invalid path 5 \(int\): it must be a string or null"),
        (lambda d: d["sae"].update(width=64), r"Unknown keys \['width'\] in sae"),
        (lambda d: d.update(sae=None), "Invalid sae null: it must be a mapping"),
        (lambda d: d.update(records={"3": 1}), "Invalid records .* it must be a list of mappings"),
        (lambda d: d.update(records=["x"]), r"Invalid records\[0\] 'x' \(str\): it must be a mapping"),
        (lambda d: d.update(records=[{"index": 3}]), r"records\[0\] is missing the keys \['sign'\]"),
        (lambda d: d["records"][0].update(sign=5), r"records\[0\]: Invalid sign 5 \(int\) in the record of latent 3"),
        (lambda d: d["records"][0].update(sign=1.0), r"records\[0\]: Invalid sign 1.0 \(float\)"),
        (lambda d: d["records"][0].update(index=1.0), r"records\[0\]: Invalid record index 1.0 \(float\)"),
        (lambda d: d["records"][0].update(activation_shift="x"), r"Invalid activation_shift 'x' \(str\)"),
        (lambda d: d["records"][0].update(screen=[]), r"Invalid screen \[\] \(list\)"),
        (lambda d: d["records"][0].update(index=9), "record of latent 9 describes a latent that is in neither K"),
        (lambda d: d["records"][0].update(sign=-1), r"record of latent 3 has sign -1, but the latent is in K\+"),
        (lambda d: d["records"].append(dict(d["records"][0])), "Latent 3 has more than one record"),
    ],
)
def test_invalid_field_names_file(tmp_path, edit, message):
    path = write_edited(tmp_path, edit)
    with pytest.raises(LatentSetError, match=message) as raised:
        LatentSet.from_pretrained(path)
    assert str(raised.value).startswith(path)


def test_newer_schema_version_asks_upgrade(tmp_path):
    path = write_edited(tmp_path, lambda d: d.update(schema_version=2))
    with pytest.raises(LatentSetError, match="Upgrade blockem_trl"):
        LatentSet.from_pretrained(path)


def test_layer_index_stays_int(tmp_path):
    loaded = LatentSet.from_pretrained(write_edited(tmp_path, lambda d: d.update(layer_index=19)))
    assert type(loaded.layer_index) is int


def test_record_outside_k_rejected():
    with pytest.raises(LatentSetError, match="record of latent 40 describes a latent that is in neither"):
        make_latent_set(records=[LatentRecord(index=40, sign=1)])


def test_record_sign_must_match_list():
    with pytest.raises(LatentSetError, match=r"record of latent 5 has sign 1, but the latent is in K- \(sign -1\)"):
        make_latent_set(records=[LatentRecord(index=5, sign=1)])


@pytest.mark.parametrize("sign", [0, 2, True, 1.0, "1"])
def test_record_invalid_sign_rejected(sign):
    with pytest.raises(LatentSetError, match="it must be the integer 1"):
        LatentRecord(index=3, sign=sign)


@pytest.mark.parametrize("d_sae", ["48", True, 48.0, 0])
def test_sae_width_must_be_integer(d_sae):
    with pytest.raises(LatentSetError, match="Invalid d_sae"):
        SAEReference(d_sae=d_sae)


def test_latent_set_error_is_value_error():
    assert issubclass(LatentSetError, ValueError)
