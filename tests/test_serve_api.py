"""`sunfish serve` through the official `openai` client and plain HTTP: a real server on a free loopback port."""

from __future__ import annotations

import json
import urllib.request

import pytest

from serving import needs_serve_extra, start_server, train_small

needs_serve_extra()
openai = pytest.importorskip("openai", reason="the openai package is not installed (pip install -e .[dev])")

KEY = "test-key"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_small(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def server(model_dir):
    s = start_server(model_dir, "--api-key", KEY, "--max-tokens", "100", "--max-prompt-tokens", "60",
                     "--max-body", "4096", "--name", "tiny")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_models_and_a_completion_through_the_openai_client(client, model_dir):
    import sunfish

    assert [m.id for m in client.models.list().data] == ["tiny"]
    out = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16, seed=5,
                                    extra_body={"sunfish": {"steps": 8}})
    choice = out.choices[0]
    assert out.object == "text_completion" and choice.finish_reason in ("stop", "length")
    model = sunfish.load(model_dir, device="cpu")
    assert out.usage.prompt_tokens == 1 + len(model.tokenizer.encode("Once upon a time"))  # BOS + the prompt
    assert 0 < out.usage.completion_tokens <= 16 and out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    alone = model.generate("Once upon a time", 16, seed=5, steps=8)
    assert "Once upon a time" + choice.text == alone.text  # the server decodes exactly as the Python API does


def test_chat_through_the_openai_client(client):
    out = client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "Be kind."},
                                                                 {"role": "user", "content": "Tell a story."}],
                                         max_tokens=12, seed=1)
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert isinstance(out.choices[0].message.content, str) and "User:" not in out.choices[0].message.content


def test_streaming_sends_text_before_the_end_and_every_step_of_the_canvas(client):
    stream = client.completions.create(model="tiny", prompt="The cat", max_tokens=32, seed=2, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"sunfish": {"steps": 32, "block_length": 8, "stream_canvas": True}})
    chunks = list(stream)
    events = [c.model_extra["sunfish"] for c in chunks if not c.choices and c.model_extra.get("sunfish")]
    texts = [(i, c.choices[0].text) for i, c in enumerate(chunks) if c.choices and c.choices[0].text]
    finish = [i for i, c in enumerate(chunks) if c.choices and c.choices[0].finish_reason]
    steps = [e for e in events if e["event"] == "step"]
    assert events[0]["event"] == "start" and events[0]["length"] == 32 and events[-1]["event"] == "done"
    assert len(steps) == events[-1]["steps"] > 1 and len(finish) == 1
    assert sum(len(e["committed"]) for e in steps) + steps[-1]["masked"] <= 32
    assert texts and texts[0][0] < finish[0], "text arrives before the last chunk"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_a_stop_string_ends_the_text_before_it(client, model_dir):
    import sunfish

    alone = sunfish.load(model_dir, device="cpu").generate("Once", 48, seed=8, temperature=1.0).text[len("Once"):]
    assert len(alone) >= 6, f"the model wrote too little to pick a stop string from: {alone!r}"
    stop = alone[len(alone) // 2 : len(alone) // 2 + 3]
    out = client.completions.create(model="tiny", prompt="Once", max_tokens=48, seed=8, temperature=1.0, stop=[stop])
    assert out.choices[0].text == alone[: alone.index(stop)] and out.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Once", max_tokens=48, seed=8, temperature=1.0, stop=stop, stream=True) if c.choices)
    assert streamed == out.choices[0].text


def test_n_choices_are_the_seeds_s_to_s_plus_n(client):
    many = client.completions.create(model="tiny", prompt="Lily", max_tokens=12, n=3, seed=10, temperature=1.0)
    assert [c.index for c in many.choices] == [0, 1, 2]
    for c in many.choices:
        one = client.completions.create(model="tiny", prompt="Lily", max_tokens=12, seed=10 + c.index, temperature=1.0)
        assert one.choices[0].text == c.text


def test_a_seed_reproduces_and_another_seed_differs(client):
    def text(seed):
        return client.completions.create(model="tiny", prompt="One day", max_tokens=24, seed=seed,
                                         temperature=1.0).choices[0].text

    assert text(3) == text(3)
    assert len({text(s) for s in (3, 4, 5, 6)}) > 1


def test_a_wrong_or_missing_key_is_refused(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    status, _, body = server.request("GET", "/v1/models")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert server.request("GET", "/health")[0] == 200  # health needs no key


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"prompt": "x", "max_tokens": "8"}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "x", "frobnicate": 1}, 400, "unknown field"),
    ({"prompt": "x", "logprobs": 3}, 400, "logprobs is not supported"),
    ({"prompt": "x", "sunfish": {"solver": "euler"}}, 400, "solver"),
    ({"prompt": "x", "max_tokens": 101}, 400, "limit of 100"),
    ({"prompt": "x " * 40}, 413, "limit of 60"),  # one token per "x " and per " " with this tokenizer
    ({"prompt": "x" * 40, "max_tokens": 100, "sunfish": {"steps": 4}}, 400, "context"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "does not exist"),
    ({"prompt": "x" * 5000}, 413, "4096 bytes"),
])
def test_bad_requests_get_their_status_and_the_server_keeps_serving(server, body, status, words):
    got, _, answer = server.request("POST", "/v1/completions", body, AUTH)
    assert got == status and words in answer["error"]["message"], answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    ok, _, answer = server.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 4}, AUTH)
    assert ok == 200 and answer["choices"][0]["index"] == 0


def test_unknown_paths_are_404_in_openai_shape(server):
    status, _, body = server.request("GET", "/v1/nothing", headers=AUTH)
    assert status == 404 and "error" in body


def test_metrics_count_requests_and_batches(server):
    server.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 4}, AUTH)
    req = urllib.request.Request(server.url + "/metrics", headers=AUTH)
    text = urllib.request.urlopen(req, timeout=30).read().decode()
    for name in ("sunfish_requests_total", "sunfish_errors_total", "sunfish_queue_depth", "sunfish_batch_rows_count",
                 "sunfish_step_seconds_bucket", "sunfish_generated_tokens_total", "sunfish_tokens_per_second"):
        assert name in text, name
    assert 'sunfish_requests_total{path="/v1/completions",status="200"}' in text


def test_access_log_lines_are_json(server):
    logged = [json.loads(line) for line in server.lines if line.startswith("{")]
    assert any(entry["path"] == "/v1/completions" and entry["status"] == 200 for entry in logged)
