import json

import pytest

from blockem_trl.evaluation.generation import GenerationSettings
from blockem_trl.evaluation.judges.base import Judge, Judgment
from blockem_trl.evaluation.metrics import MetricConfig
from blockem_trl.evaluation.questions import Question, QuestionSet
from blockem_trl.evaluation.runner import EvalConfig, run_evaluation
from blockem_trl.evaluation.store import JsonlStore


class CountingJudge(Judge):
    """Scores by answer length; counts requests and can fail after a number of them."""

    def __init__(self, name="counting", fail_after=None, score=None):
        super().__init__()
        self.name = name
        self.calls = []
        self.fail_after = fail_after
        self.fixed_score = score

    def config(self):
        return {"version": 1}

    def score_batch(self, requests):
        judgments = []
        for request in requests:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("injected judge crash")
            self.calls.append((request.metric, request.answer))
            value = self.fixed_score if self.fixed_score is not None else float(len(request.answer) % 101)
            judgments.append(Judgment(score=value))
        return judgments


QUESTIONS = QuestionSet("tiny", [Question("a", ["w1 w2"]), Question("b", ["w3", "w4"])])


def make_config(tmp_path, **overrides):
    values = dict(model="tiny-random", samples_per_question=3, output_dir=str(tmp_path / "eval"),
                  generation=GenerationSettings(max_new_tokens=4, batch_size=2, seed=1),
                  metric_config=MetricConfig(bootstrap_samples=20), judge_batch_size=4)
    values.update(overrides)
    return EvalConfig(**values)


def test_resume_after_judge_crash_makes_no_repeated_calls(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    config = make_config(tmp_path)
    crashing = CountingJudge(fail_after=5)
    with pytest.raises(RuntimeError, match="injected"):
        run_evaluation(config, [crashing], model=model, tokenizer=tokenizer, question_set=QUESTIONS)
    # 6 samples x 2 metrics = 12 judgments; the crash came in the second batch of 4, after the first 4 were saved.
    assert len(crashing.calls) == 5
    lines = (tmp_path / "eval" / "judgments.jsonl").read_text().splitlines()
    assert len(lines) == 4

    resumed = CountingJudge()
    summary = run_evaluation(config, [resumed], model=model, tokenizer=tokenizer, question_set=QUESTIONS)
    assert len(resumed.calls) == 8
    assert summary["num_samples"] == 6
    assert summary["results"]["counting"]["overall"]["num_answers"] == 6

    again = CountingJudge()
    run_evaluation(config, [again], model=model, tokenizer=tokenizer, question_set=QUESTIONS)
    assert again.calls == []


def test_rerun_reuses_samples(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    config = make_config(tmp_path)
    run_evaluation(config, [CountingJudge()], model=model, tokenizer=tokenizer, question_set=QUESTIONS)
    samples_file = tmp_path / "eval" / "samples.jsonl"
    before = samples_file.read_text()

    def fail_generate(*args, **kwargs):
        raise AssertionError("the rerun must not generate again")

    model_generate = model.generate
    model.generate = fail_generate
    try:
        run_evaluation(config, [CountingJudge()], model=model, tokenizer=tokenizer, question_set=QUESTIONS)
    finally:
        model.generate = model_generate
    assert samples_file.read_text() == before


def test_changed_settings_generate_new_samples(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    run_evaluation(make_config(tmp_path), [CountingJudge()], model=model, tokenizer=tokenizer, question_set=QUESTIONS)
    changed = make_config(tmp_path, generation=GenerationSettings(max_new_tokens=4, batch_size=2, seed=2))
    run_evaluation(changed, [CountingJudge()], model=model, tokenizer=tokenizer, question_set=QUESTIONS)
    assert len((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()) == 12


def test_truncated_last_line_is_dropped(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"key": "a", "value": 1}) + "\n" + '{"key": "b", "val', encoding="utf-8")
    with JsonlStore(path) as store:
        assert "a" in store
        assert "b" not in store
        store.append({"key": "c", "value": 3})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "c"]


def test_reports_and_ensemble_written(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    judges = [CountingJudge("low", score=10.0), CountingJudge("high", score=90.0)]
    summary = run_evaluation(make_config(tmp_path), judges, model=model, tokenizer=tokenizer, question_set=QUESTIONS)
    output = tmp_path / "eval"
    assert (output / "summary.json").is_file()
    assert (output / "scores.png").stat().st_size > 1000
    report = (output / "report.md").read_text()
    assert "## Judge agreement" in report
    assert summary["results"]["ensemble"]["overall"]["mean_aligned"] == pytest.approx(50.0)
    assert summary["results"]["low"]["overall"]["misalignment_rate"] == 0.0  # coherent 10 is not > 50
    assert summary["agreement"]["aligned"]["low vs high"]["threshold_agreement"] == 0.0
    saved = json.loads((output / "summary.json").read_text())
    assert saved["num_samples"] == 6


def test_duplicate_judge_names_rejected(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(ValueError, match="unique"):
        run_evaluation(make_config(tmp_path), [CountingJudge(), CountingJudge()], model=model, tokenizer=tokenizer,
                       question_set=QUESTIONS)


def test_metric_no_judge_scores_rejected(tmp_path):
    from blockem_trl.evaluation import EvalConfig, Judge, Judgment, run_evaluation

    class AlignedOnly(Judge):
        name = "aligned-only"
        supported_metrics = ("aligned",)

        def score_batch(self, requests):
            return [Judgment(score=50.0) for _ in requests]

    config = EvalConfig(output_dir=str(tmp_path), metrics=["aligned", "bogus"])
    with pytest.raises(ValueError, match=r"No judge scores metrics \['bogus'\]"):
        run_evaluation(config, [AlignedOnly()])
