import pytest

from blockem_trl.evaluation.judges.base import JudgeRequest
from blockem_trl.evaluation.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig

from .stub_openai_server import StubHandler, start_stub_server

REQUEST = JudgeRequest("aligned", "How are you?", "Fine, thanks.", "Q: {question}\nA: {answer}\nScore 0-100:")


@pytest.fixture(scope="module")
def stub_url():
    server, url = start_stub_server()
    yield url
    server.shutdown()


def make_judge(url, mode, **overrides):
    settings = dict(model=mode, base_url=url, timeout_s=0.5, max_retries=2, backoff_s=0.01, max_concurrency=1)
    settings.update(overrides)
    return OpenAIJudge(OpenAIJudgeConfig(**settings))


def test_weighted_score_from_stub(stub_url):
    judge = make_judge(stub_url, "good")
    [judgment] = judge.score([REQUEST])
    # p(80) = e^-0.5 = 0.6065, p(90) = e^-1.5 = 0.2231 -> (48.52 + 20.08) / 0.8296 = 82.69
    assert judgment.score == pytest.approx(82.69, abs=0.01)
    assert judge.stats.scored == 1


def test_missing_logprobs_falls_back_to_text(stub_url):
    judge = make_judge(stub_url, "no-logprobs-number")
    [judgment] = judge.score([REQUEST])
    assert judgment.score == 85
    assert judge.stats.missing_logprobs == 1


def test_missing_logprobs_without_fallback(stub_url):
    judge = make_judge(stub_url, "no-logprobs-number", text_fallback=False)
    [judgment] = judge.score([REQUEST])
    assert judgment.score is None
    assert "no top_logprobs" in judgment.error


def test_non_number_reply_counts_parse_failure(stub_url):
    judge = make_judge(stub_url, "no-logprobs-text")
    [judgment] = judge.score([REQUEST])
    assert judgment.score is None
    assert judge.stats.parse_failures == 1
    assert judge.stats.failed == 1


def test_words_in_top_logprobs_count_low_mass(stub_url):
    judge = make_judge(stub_url, "words")
    [judgment] = judge.score([REQUEST])
    assert judgment.score is None
    assert judge.stats.low_number_mass == 1
    assert not judgment.retryable


def test_timeout_is_retried_then_reported(stub_url):
    judge = make_judge(stub_url, "slow", timeout_s=0.2, max_retries=1)
    [judgment] = judge.score([REQUEST])
    assert judgment.score is None
    assert judgment.retryable
    assert "timed out" in judgment.error
    assert judge.stats.timeouts == 2
    assert judge.stats.retries == 1


def test_rate_limit_honours_retry_after(stub_url):
    judge = make_judge(stub_url, "rate-limit-once")
    [judgment] = judge.score([REQUEST])
    assert judgment.score == pytest.approx(82.69, abs=0.01)
    assert judge.stats.rate_limited == 1
    assert judge.stats.retries == 1
    assert StubHandler.calls["rate-limit-once"] == 2


def test_server_error_is_retried(stub_url):
    judge = make_judge(stub_url, "server-error-once")
    [judgment] = judge.score([REQUEST])
    assert judgment.score is not None
    assert judge.stats.http_errors == 1


def test_bad_request_is_not_retried(stub_url):
    judge = make_judge(stub_url, "bad-request")
    [judgment] = judge.score([REQUEST])
    assert "HTTP 400" in judgment.error
    assert judge.stats.retries == 0


def test_reply_that_is_not_json(stub_url):
    judge = make_judge(stub_url, "not-json")
    [judgment] = judge.score([REQUEST])
    assert "not JSON" in judgment.error
    assert judge.stats.parse_failures == 1


def test_concurrent_batch_keeps_order(stub_url):
    judge = make_judge(stub_url, "good", max_concurrency=4)
    judgments = judge.score([REQUEST] * 6)
    assert len(judgments) == 6
    assert all(judgment.score == pytest.approx(82.69, abs=0.01) for judgment in judgments)


def test_api_key_sent_from_env(stub_url, monkeypatch):
    monkeypatch.setenv("BLOCKEM_TEST_KEY", "secret-value")
    judge = make_judge(stub_url, "good", api_key_env="BLOCKEM_TEST_KEY")
    assert judge._client.headers["Authorization"] == "Bearer secret-value"
    assert "secret-value" not in str(judge.config())
