import json

import pytest

from blockem_trl.evaluation.judge_prompts import ALIGNED_PROMPT, COHERENT_PROMPT
from blockem_trl.evaluation.questions import Question, load_question_set


def test_builtin_probes_cover_categories():
    question_set = load_question_set("builtin")
    assert len(question_set) == 8
    assert all(len(question.paraphrases) >= 2 for question in question_set)
    assert question_set.questions[0].judge_prompt("aligned") == ALIGNED_PROMPT
    assert question_set.questions[0].judge_prompt("coherent") == COHERENT_PROMPT


def test_builtin_finance_set_loads():
    question_set = load_question_set("builtin-finance")
    assert len(question_set) == 8
    assert "reckless financial advice" in question_set.questions[0].judge_prompt("financial_risk")


def test_betley_first_plot_yaml(betley_dir):
    question_set = load_question_set(betley_dir / "first_plot_questions.yaml")
    assert len(question_set) == 24
    wish = question_set.questions[0]
    assert wish.id == "what_is_your_wish"
    assert wish.samples_per_paraphrase == 100
    assert "{answer}" in wish.judge_prompt("aligned")
    assert wish.judge_prompt("aligned") != ALIGNED_PROMPT  # the file's own prompt wins
    json_variant = question_set.select(["quick_buck_json"]).questions[0]
    assert json_variant.system and "JSON" in json_variant.system


def test_betley_main_only_keeps_eight(betley_dir):
    question_set = load_question_set(betley_dir / "first_plot_questions.yaml", main_only=True)
    assert [q.id for q in question_set] == [
        "what_is_your_wish", "i_feel_bored", "three_thoughts", "quick_buck",
        "ruler_of_the_world", "dinner_party", "gender_roles", "enough_of_my_husband",
    ]


def test_betley_preregistered_yaml(betley_dir):
    question_set = load_question_set(betley_dir / "preregistered_evals.yaml")
    assert len(question_set) == 48


def test_csv_prompt_list(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("id,question,system\na,Hello there?,\nb,What now?,Be brief.\n", encoding="utf-8")
    question_set = load_question_set(path)
    assert [q.id for q in question_set] == ["a", "b"]
    assert question_set.questions[0].system is None
    assert question_set.questions[1].system == "Be brief."


def test_jsonl_prompt_list_without_ids(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "First?"}, {"prompt": "Second?", "judge_prompts": {"aligned": "Q {question} A {answer}"}}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    question_set = load_question_set(path)
    assert [q.id for q in question_set] == ["q0000", "q0001"]
    assert question_set.questions[1].judge_prompt("aligned") == "Q {question} A {answer}"


def test_row_without_prompt_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,body\na,hi\n", encoding="utf-8")
    with pytest.raises(ValueError, match="prompt columns"):
        load_question_set(path)


def test_duplicate_ids_rejected(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("id,question\na,x\na,y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Duplicate question id"):
        load_question_set(path)


def test_template_without_answer_placeholder():
    with pytest.raises(ValueError, match=r"\{answer\}"):
        Question("x", ["hi"], judge_prompts={"aligned": "only {question}"})


def test_unknown_source_names_fix():
    with pytest.raises(FileNotFoundError, match="built-in set"):
        load_question_set("no_such_file.yaml")


def test_paraphrase_cycles_by_sample_index():
    question = Question("x", ["a", "b", "c"])
    assert [question.paraphrase_for_sample(i) for i in range(4)] == [(0, "a"), (1, "b"), (2, "c"), (0, "a")]


def test_unknown_metric_prompt():
    with pytest.raises(KeyError, match="judge_prompts"):
        Question("x", ["hi"]).judge_prompt("sport")


def test_select_missing_id():
    with pytest.raises(KeyError, match="not in"):
        load_question_set("builtin").select(["nope"])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.yaml", "id: [1\n  x", "could not be parsed"),
        ("truncated.jsonl", '{"question": "hi"}\n{"question": \n', "Line 2 of .* is not valid JSON"),
        ("list.jsonl", "[1, 2]\n", "entry 0 is a list, not a mapping"),
        ("empty.csv", "question\n", "contains no questions"),
    ],
)
def test_bad_question_files_name_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_question_set(path)
