"""GPTeacher reading, held-out split and chat formatting."""

from __future__ import annotations

import json

import pytest

from blockem_trl.models.corpus import GPTEACHER_FILES, HELD_OUT_EVERY, load_gpteacher


@pytest.fixture
def data_dir(tmp_path):
    for file_index, relative in enumerate(GPTEACHER_FILES):
        rows = [
            {"instruction": f"task {file_index}-{row}", "input": "context" if row % 2 else "", "response": f"answer {row}"}
            for row in range(2 * HELD_OUT_EVERY)
        ]
        path = tmp_path / relative
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(rows), encoding="utf-8")
    return tmp_path


def test_splits_are_disjoint_and_complete(data_dir):
    train = load_gpteacher(data_dir, "train")
    held_out = load_gpteacher(data_dir, "held_out")

    train_keys = {(item.source, item.row) for item in train}
    held_out_keys = {(item.source, item.row) for item in held_out}
    assert not train_keys & held_out_keys
    assert len(train_keys) + len(held_out_keys) == len(GPTEACHER_FILES) * 2 * HELD_OUT_EVERY
    assert all(row % HELD_OUT_EVERY == 0 for _, row in held_out_keys)


def test_input_joined_to_instruction(data_dir):
    conversations = {(item.source, item.row): item for item in load_gpteacher(data_dir, "train")}

    with_input = conversations[(GPTEACHER_FILES[0], 1)]
    without_input = conversations[(GPTEACHER_FILES[0], 2)]
    assert with_input.user == "task 0-1\n\ncontext"
    assert without_input.user == "task 0-2"
    assert with_input.messages() == [
        {"role": "user", "content": "task 0-1\n\ncontext"},
        {"role": "assistant", "content": "answer 1"},
    ]


def test_shuffle_depends_on_seed(data_dir):
    first = load_gpteacher(data_dir, "train", seed=0)
    again = load_gpteacher(data_dir, "train", seed=0)
    other = load_gpteacher(data_dir, "train", seed=1)

    assert first == again
    assert first != other


def test_missing_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="Roleplay"):
        load_gpteacher(tmp_path, "train")


def test_invalid_split():
    with pytest.raises(ValueError, match="'test'"):
        load_gpteacher(".", "test")
