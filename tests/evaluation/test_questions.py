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
    with pytest.raises(ValueError, match="duplicate question id 'a'"):
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
    with pytest.raises(ValueError, match=r"Invalid question ids \['nope'\].*Valid ids: 'bored_afternoon'"):
        load_question_set("builtin").select(["nope"])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.yaml", "id: [1\n  x", "could not be parsed"),
        ("truncated.jsonl", '{"question": "hi"}\n{"question": \n', "Line 2 of .* is not valid JSON"),
        ("list.jsonl", "[1, 2]\n", "line 1: the entry is a list, not a mapping"),
        ("empty.csv", "question\n", "contains no questions"),
    ],
)
def test_bad_question_files_name_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_question_set(path)


@pytest.mark.parametrize("source", ["some/dir/nope.yaml", "org/nope.yaml", "org/nope.csv", "./nope", "/no/such/file"])
def test_missing_path_not_hub_id(source):
    with pytest.raises(FileNotFoundError, match=f"Question file '{source}' not found"):
        load_question_set(source)


def test_missing_path_object_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_question_set(tmp_path / "nope")


def test_tilde_path_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "prompts.csv").write_text("question\nHello?\n", encoding="utf-8")
    question_set = load_question_set("~/prompts.csv")
    assert question_set.questions[0].paraphrases == ["Hello?"]


def test_missing_tilde_path_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path}/nope.yaml' not found"):
        load_question_set("~/nope.yaml")


def test_unreachable_hub_id_is_clear(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline_load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/name' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline_load_dataset)
    with pytest.raises(FileNotFoundError, match="'org/name' is not a local file, and loading it as a Hub dataset"):
        load_question_set("org/name")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("null.yaml", "- id: a\n  paraphrases: null\n", r"entry 0: Invalid paraphrases null: it must be a string or a list"),
        ("number.yaml", "- id: a\n  paraphrases: 5\n", r"entry 0: Invalid paraphrases 5 \(int\)"),
        ("nested.yaml", "- id: a\n  paraphrases: [[x]]\n", r"Invalid paraphrase 0, \['x'\] \(list\)"),
        ("blank.yaml", "- id: a\n  paraphrases: ['  ']\n", "Paraphrase 0 is empty"),
        ("top.json", "5", r"contains 5 \(int\). It must contain a JSON list of questions"),
        ("questions_null.json", '{"questions": null}', "'questions' is null, not a list"),
        ("other_key.json", '{"a": 1}', "a mapping without a 'questions' key \\(its keys are 'a'\\)"),
        ("empty.yaml", "", "contains null. It must contain a YAML list of questions"),
        ("system.yaml", "- paraphrases: [hi]\n  system: [x]\n", r"Invalid system \['x'\] \(list\)"),
        ("judge.yaml", "- paraphrases: [hi]\n  judge_prompts: [x]\n", "Invalid judge_prompts"),
        ("count.yaml", "- paraphrases: [hi]\n  samples_per_paraphrase: many\n", "Invalid samples_per_paraphrase 'many'"),
        ("object.jsonl", '{"question": {"a": 1}}\n', r"line 1: Invalid question \{'a': 1\} \(dict\)"),
    ],
)
def test_wrong_shape_names_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as raised:
        load_question_set(path)
    assert str(path) in str(raised.value)


def test_non_utf8_file_named(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"id,question\na,caf\xe9?\n")
    with pytest.raises(ValueError, match="is not valid UTF-8: byte 0xe9 on line 2") as raised:
        load_question_set(path)
    assert str(path) in str(raised.value)


def test_csv_empty_question_cell(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("id,question\na,Hello?\nb,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3: The row has an empty 'question'"):
        load_question_set(path)


def test_csv_samples_per_paraphrase_parsed(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("question,samples_per_paraphrase\nHello?,3\n", encoding="utf-8")
    assert load_question_set(path).questions[0].samples_per_paraphrase == 3


def test_metric_without_judge_prompt_rejected(tmp_path):
    from blockem_trl.evaluation import EvalConfig, Judge, Judgment, run_evaluation

    class AnyMetric(Judge):
        name = "any-metric"

        def score_batch(self, requests):
            return [Judgment(score=50.0) for _ in requests]

    config = EvalConfig(output_dir=str(tmp_path), metrics=["aligned", "sport"])
    with pytest.raises(ValueError, match="No judge prompt for metric 'sport' in questions genie_wish"):
        run_evaluation(config, [AnyMetric()])
