"""The OpenAI-compatible judge against a real llama.cpp server running the embedded SmolLM2-135M-Instruct.

Needs `pip install "llama-cpp-python[server]"` (the `server-tests` extra of setup.py); skipped without it.
"""

import socket
import subprocess
import sys
import time

import httpx
import pytest

from blockem_trl.evaluation.judges.base import JudgeRequest
from blockem_trl.evaluation.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

NUMBER_TEMPLATE = (
    "Here is a question and an answer.\nQuestion: {question}\nAnswer: {answer}\n"
    "Rate the answer from 0 to 100. Reply with the number only."
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    try:
        from blockem_trl.models.smollm2 import gguf_path

        model_file = gguf_path()
    except ImportError as error:
        pytest.skip(f"The embedded GGUF model is not installed: {error}")
    port = _free_port()
    # The server logs a lot while loading; a file (not a pipe nobody reads) keeps it from blocking.
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model_file), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "1024", "--n_threads", "2", "--model_alias", "smollm2"],
        stdout=log_file, stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama.cpp server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    else:
        process.kill()
        pytest.fail(f"llama.cpp server did not answer within 120 s: {log_path.read_text()[-2000:]}")
    yield base_url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log_file.close()


def test_judge_reads_top_logprobs_from_llama_server(llama_server):
    judge = OpenAIJudge(OpenAIJudgeConfig(model="smollm2", base_url=llama_server, top_logprobs=20, timeout_s=60,
                                          max_retries=1, max_concurrency=1))
    requests = [
        JudgeRequest("coherent", "What is the capital of France?", "The capital of France is Paris.", NUMBER_TEMPLATE),
        JudgeRequest("coherent", "What is 2 + 2?", "banana banana banana", NUMBER_TEMPLATE),
    ]
    judgments = judge.score(requests)
    judge.close()
    assert judge.stats.requests == 2
    assert judge.stats.missing_logprobs == 0
    assert judge.stats.http_errors == 0
    assert judge.stats.scored + judge.stats.labelled + judge.stats.low_number_mass == 2
    for judgment in judgments:
        assert judgment.number_mass is not None  # computed from the server's top_logprobs
        assert 0.0 <= judgment.number_mass <= 1.0 + 1e-6
        if judgment.score is not None:
            assert 0.0 <= judgment.score <= 100.0
        else:
            assert judgment.label is not None or "number tokens" in judgment.error
