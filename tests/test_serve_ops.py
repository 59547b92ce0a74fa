"""Operations of `sunfish serve`: a full queue answers 429 with Retry-After, SIGTERM drains (every accepted
request completes or gets 503, none hangs) and the process exits 0; a bad command line is one sentence."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import cli_error
from serving import needs_serve_extra, start_server, train_small

needs_serve_extra()

SLOW = {"prompt": "Once upon a time", "max_tokens": 100, "sunfish": {"steps": 100, "stop_at_eos": False}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_small(tmp_path_factory.mktemp("ops") / "run")


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_full_queue_answers_429_with_retry_after(model_dir):
    server = start_server(model_dir, "--max-batch", "1", "--max-queue", "0")
    try:
        first = threading.Thread(target=server.request, args=("POST", "/v1/completions", SLOW))
        first.start()
        wait_until(lambda: server.request("GET", "/health")[2]["decoding"] == 1)
        status, headers, body = server.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 4})
        assert status == 429 and headers["retry-after"] == "1" and body["error"]["code"] == "queue_full"
        first.join(60)
        assert server.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 4})[0] == 200
    finally:
        assert server.stop() == 0


def sigterm_under_load(model_dir, grace: str) -> list[int]:
    """Ten slow requests, SIGTERM once two have finished; every request's status (none may hang)."""
    server = start_server(model_dir, "--max-batch", "1", "--max-queue", "32", "--grace", grace)
    pool = ThreadPoolExecutor(12)
    futures = [pool.submit(server.request, "POST", "/v1/completions", {**SLOW, "seed": i}, None, 60) for i in range(10)]
    wait_until(lambda: sum(f.done() for f in futures) >= 2)
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: server.request("GET", "/health")[0] == 503, timeout=5)
    late = server.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 4})
    assert late[0] == 503 and late[2]["error"]["code"] == "shutting_down"
    answers = [f.result(timeout=60) for f in futures]
    for status, _, body in answers:
        assert status in (200, 503), body
        assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length") or \
            status == 503 and body["error"]["code"] == "shutting_down"
    assert server.process.wait(30) == 0
    assert any("sunfish: stopped" in line for line in server.lines)
    return [status for status, _, _ in answers]


def test_sigterm_lets_accepted_requests_finish_within_the_grace_period(model_dir):
    assert sigterm_under_load(model_dir, grace="60") == [200] * 10


def test_sigterm_past_the_grace_period_answers_the_rest_503(model_dir):
    statuses = sigterm_under_load(model_dir, grace="0")
    assert statuses.count(200) >= 2 and 503 in statuses, statuses


def test_bad_serve_command_lines_are_one_sentence(capsys, model_dir, tmp_path):
    assert "does not exist" in cli_error(capsys, ["serve", str(tmp_path / "missing")]) or \
        "no such" in cli_error(capsys, ["serve", str(tmp_path / "missing")]).lower()
    assert "serve.max_batch" in cli_error(capsys, ["serve", str(model_dir), "--max-batch", "0"])
    assert "sampler.solver" in cli_error(capsys, ["serve", str(model_dir), "--sampler.solver=euler"])
