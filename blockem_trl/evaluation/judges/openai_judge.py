"""A judge behind any OpenAI-compatible chat completions endpoint (OpenAI, vLLM, llama.cpp server, Ollama).

The judge asks for one token with ``logprobs`` and ``top_logprobs`` and computes the probability-weighted
score over the number tokens 0-100 of that first token. Requests run concurrently on a thread pool. Timeouts,
connection errors, HTTP 429 (honouring ``Retry-After``) and 5xx replies are retried with exponential backoff.
Every outcome is counted in `Judge.stats`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import httpx

from .base import Judge, JudgeRequest, Judgment
from .scoring import MIN_NUMBER_MASS, score_from_text, score_from_top_logprobs

logger = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
"""Used only when neither `base_url` nor the `OPENAI_BASE_URL` environment variable is set."""


@dataclass
class OpenAIJudgeConfig:
    """Settings of `OpenAIJudge`."""

    model: str = field(default="gpt-4o-2024-08-06", metadata={"help": "Model name sent in each request."})
    base_url: str | None = field(
        default=None,
        metadata={"help": "Endpoint root such as http://127.0.0.1:8000/v1; default $OPENAI_BASE_URL, else OpenAI's API."},
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key (may be unset locally)."}
    )
    top_logprobs: int = field(default=20, metadata={"help": "Candidates requested for the first token (OpenAI max 20)."})
    timeout_s: float = field(default=60.0, metadata={"help": "Timeout of one HTTP request in seconds."})
    max_retries: int = field(default=5, metadata={"help": "Retries after a timeout, connection error, 429 or 5xx."})
    backoff_s: float = field(default=1.0, metadata={"help": "First retry delay in seconds; doubles on each retry."})
    max_backoff_s: float = field(default=60.0, metadata={"help": "Upper bound of one retry delay in seconds."})
    max_concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    min_number_mass: float = field(
        default=MIN_NUMBER_MASS, metadata={"help": "Minimum probability on number tokens for a score to count."}
    )
    text_fallback: bool = field(
        default=True,
        metadata={"help": "If the server returns no logprobs, parse the reply text instead (counted as missing_logprobs)."},
    )
    seed: int | None = field(default=0, metadata={"help": "Seed sent to servers that support it."})

    def resolved_base_url(self) -> str:
        return (self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")


class OpenAIJudge(Judge):
    """Judge that scores with an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(self, config: OpenAIJudgeConfig | None = None, name: str | None = None):
        super().__init__()
        self.cfg = config or OpenAIJudgeConfig()
        self.name = name or f"openai:{self.cfg.model}"
        api_key = os.environ.get(self.cfg.api_key_env, "")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.cfg.resolved_base_url(), headers=headers, timeout=self.cfg.timeout_s
        )

    def config(self) -> dict:
        settings = asdict(self.cfg)
        settings["base_url"] = self.cfg.resolved_base_url()
        # These settings change how failures are retried, not the score.
        for key in ("timeout_s", "max_retries", "backoff_s", "max_backoff_s", "max_concurrency", "api_key_env"):
            settings.pop(key)
        return settings

    def score_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        if len(requests) <= 1 or self.cfg.max_concurrency <= 1:
            return [self._score_one(request) for request in requests]
        with ThreadPoolExecutor(max_workers=self.cfg.max_concurrency) as pool:
            return list(pool.map(self._score_one, requests))

    def _payload(self, request: JudgeRequest) -> dict:
        payload = {
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": request.render()}],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": self.cfg.top_logprobs,
        }
        if self.cfg.seed is not None:
            payload["seed"] = self.cfg.seed
        return payload

    def _score_one(self, request: JudgeRequest) -> Judgment:
        try:
            body = self._post_with_retries(self._payload(request))
        except JudgeRequestError as error:
            logger.error("Judge %s failed on a %s request: %s", self.name, request.metric, error)
            return Judgment(error=str(error), retryable=True)
        return self._parse(body)

    def _post_with_retries(self, payload: dict) -> dict:
        last_error = ""
        for attempt in range(self.cfg.max_retries + 1):
            delay = min(self.cfg.backoff_s * 2**attempt, self.cfg.max_backoff_s)
            try:
                response = self._client.post("/chat/completions", json=payload)
            except httpx.TimeoutException as error:
                self.stats.add("timeouts")
                last_error = f"timed out after {self.cfg.timeout_s} s ({type(error).__name__})"
            except httpx.TransportError as error:
                self.stats.add("http_errors")
                last_error = f"connection failed: {error}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        self.stats.add("parse_failures")
                        raise JudgeRequestError(f"the reply is not JSON: {response.text[:200]!r}") from None
                if response.status_code == 429:
                    self.stats.add("rate_limited")
                    delay = max(delay, _retry_after_seconds(response))
                    last_error = "rate limited (HTTP 429)"
                elif response.status_code >= 500:
                    self.stats.add("http_errors")
                    last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                else:
                    self.stats.add("http_errors")
                    raise JudgeRequestError(f"HTTP {response.status_code}: {response.text[:300]}")
            if attempt == self.cfg.max_retries:
                break
            self.stats.add("retries")
            delay = min(delay, self.cfg.max_backoff_s) * (1 + 0.1 * random.random())
            logger.warning("Judge %s: %s; retry %d/%d in %.1f s.", self.name, last_error, attempt + 1,
                           self.cfg.max_retries, delay)
            time.sleep(delay)
        raise JudgeRequestError(f"{last_error}; gave up after {self.cfg.max_retries} retries")

    def _parse(self, body: dict) -> Judgment:
        try:
            choice = body["choices"][0]
        except (KeyError, IndexError, TypeError):
            self.stats.add("parse_failures")
            return Judgment(error=f"reply has no choices: {str(body)[:200]}")
        content = (choice.get("logprobs") or {}).get("content") or []
        top = content[0].get("top_logprobs") if content else None
        if top:
            judgment = score_from_top_logprobs(
                {item["token"]: item["logprob"] for item in top}, self.cfg.min_number_mass
            )
            if judgment.error is not None:
                self.stats.add("low_number_mass")
            return judgment

        self.stats.add("missing_logprobs")
        text = (choice.get("message") or {}).get("content") or ""
        if not self.cfg.text_fallback:
            return Judgment(error="the server returned no top_logprobs; use a server that supports logprobs")
        judgment = score_from_text(text)
        if judgment.error is not None:
            self.stats.add("parse_failures")
        return judgment

    def close(self) -> None:
        self._client.close()


class JudgeRequestError(RuntimeError):
    """A judge request failed for good (after retries, or with a non-retryable HTTP status)."""


def _retry_after_seconds(response: httpx.Response) -> float:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else 0.0
    except ValueError:
        return 0.0  # an HTTP date; fall back to exponential backoff
