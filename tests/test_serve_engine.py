"""The serving engine: a row decoded in a busy batch equals the same row decoded alone, for every process and
sampler setting that merges; the final-text stream holds back what may still change."""

from __future__ import annotations

import threading

import pytest
import torch

import sunfish
from sunfish.model.kv_cache import KVCache
from sunfish.sample.prompt import cut_at_eos, prompt_canvas
from sunfish.sample.stream import FinalText
from sunfish.serve.engine import Cancelled, Engine, QueueFull, Row, ShuttingDown
from sunfish.serve.merge import MergedForward

from serving import train_small

PROMPTS = ["Once upon a time", "The cat", "Lily went to the park and saw", "He", "A big dog ran to", "Tom",
           "Mia had a red ball. She", "The sun"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return {p: sunfish.load(train_small(root / p, process=p, steps=20), device="cpu")
            for p in ("masked", "block", "ar", "continuous", "flow")}


def busy(model, settings: dict, max_batch: int = 8) -> tuple[list[list[int]], list[int]]:
    """Decode every prompt at once through one engine (seed 7 + i); their ids and the rows of each merged round."""
    tok, cfg = model.tokenizer, model.sampler(**settings)
    rounds: list[int] = []
    engine = Engine(model, max_batch=max_batch, max_queue=32, on_round=lambda rows, s: rounds.append(rows))
    rows = []
    for i, p in enumerate(PROMPTS):
        canvas = prompt_canvas(tok, p, cfg.length, model.cfg.model.context)
        rows.append(Row(ids=canvas.ids, fill_start=canvas.fill_start, cfg=cfg, seed=7 + i, stop_id=tok.eos_id))
    futures = [f for row in rows for f in engine.submit([row])]
    out = [cut_at_eos(f.result(timeout=120).region, tok.eos_id) for f in futures]
    engine.drain(grace=5)
    return out, rounds


@pytest.mark.parametrize("process, settings", [
    ("masked", {"length": 24, "steps": 12}),
    ("masked", {"length": 24, "steps": 24, "temperature": 0.9, "top_p": 0.9, "policy": "margin"}),
    ("masked", {"length": 32, "block_length": 8, "rule": "threshold", "threshold": 0.3, "cache": "dual"}),
    ("masked", {"length": 32, "block_length": 16, "steps": 16, "cache": "prefix", "temperature": 1.0}),
    ("masked", {"length": 16, "steps": 16, "guidance": 1.0}),
    ("masked", {"length": 16, "steps": 16, "remask": "conf", "temperature": 1.0}),
    ("block", {"length": 32, "steps": 32, "temperature": 1.0}),
    ("ar", {"length": 16, "temperature": 1.0}),
    ("continuous", {"length": 16, "steps": 8}),
    ("flow", {"length": 16, "steps": 8}),
])
def test_a_row_in_a_busy_batch_decodes_as_it_does_alone(models, process, settings):
    model = models[process]
    alone = [model.generate(p, seed=7 + i, **settings).ids for i, p in enumerate(PROMPTS)]
    together, rounds = busy(model, settings)
    assert together == alone
    assert max(rounds) > 1, "the rows' forward passes were merged"


def test_rows_share_rounds_up_to_max_batch_and_newcomers_join_running_ones(models):
    _, rounds = busy(models["masked"], {"length": 24, "steps": 24}, max_batch=3)
    assert max(rounds) == 3  # never more rows than slots


def test_merged_cached_passes_equal_separate_ones():
    """Span passes over caches of the same length stack; fresh caches filled by a padded pass get their own rows."""
    from conftest import make_model
    from sunfish.config import ModelConfig

    net = make_model(ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, context=64))
    merged = MergedForward(net)
    calls = [torch.randint(0, 40, (1, n)) for n in (9, 13)]
    outs, caches = [None, None], [KVCache(), KVCache()]

    def decode(i):
        with merged.member():
            outs[i] = merged.hidden(calls[i], None, caches[i])
            caches[i].span = (4, 8)
            outs[i] = (outs[i], merged.hidden(calls[i][:, 4:8], None, caches[i]))

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with torch.no_grad():
        for i, x in enumerate(calls):
            cache = KVCache()
            full = net.hidden(x, None, cache)
            cache.span = (4, 8)
            span = net.hidden(x[:, 4:8], None, cache)
            torch.testing.assert_close(outs[i][0], full, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(outs[i][1], span, atol=1e-5, rtol=1e-5)
            assert caches[i].keys[0].shape == cache.keys[0].shape


def test_the_queue_bound_refuses_and_drain_cancels(models):
    model = models["masked"]
    tok, cfg = model.tokenizer, model.sampler(length=64, steps=64)
    canvas = prompt_canvas(tok, "The cat", 64, model.cfg.model.context)
    gate = threading.Event()

    def slow(info):
        gate.wait(10)
        return False

    engine = Engine(model, max_batch=1, max_queue=1)
    rows = [Row(ids=canvas.ids, fill_start=canvas.fill_start, cfg=cfg, seed=i, stop_id=None, on_step=slow) for i in range(2)]
    futures = engine.submit(rows[:1]) + engine.submit(rows[1:])
    with pytest.raises(QueueFull):
        engine.submit([Row(ids=canvas.ids, fill_start=canvas.fill_start, cfg=cfg, seed=9, stop_id=None)])
    threading.Timer(0.5, gate.set).start()
    assert engine.drain(grace=0.0) >= 1
    with pytest.raises(ShuttingDown):
        engine.submit(rows[:1])
    outcomes = []
    for f in futures:
        try:
            outcomes.append(len(f.result(timeout=30).region))
        except Cancelled:
            outcomes.append("cancelled")
    assert "cancelled" in outcomes


class Chars:
    """A tokenizer stand-in: one character per id, id 0 = [MASK], 1 = EOS."""

    @staticmethod
    def decode(ids):
        return "".join(chr(i) for i in ids)


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_final_text_streams_the_committed_prefix_and_holds_back_a_possible_stop():
    final = FinalText(Chars.decode, 0, {1}, stops=["END"])
    assert final.update(ids("ab") + [0] + ids("cd")) == "ab"
    assert final.update(ids("abcdE") + [0]) == "cd"  # "E" may begin "END": held back
    assert final.update(ids("abcdEx") + [0]) == "Ex"
    assert final.update(ids("abcdExEND") + [0, 0]) == "" and final.stopped
    delta, end = final.finish(ids("abcdExENDzz"))
    assert delta == "" and end.text == "abcdEx" and end.finish_reason == "stop" and end.tokens == 6


def test_final_text_stops_at_the_stop_token_and_waits_for_whole_characters():
    final = FinalText(lambda t: bytes(t).decode("utf-8", errors="replace"), 0, {1})
    word = "да".encode()  # two bytes per letter
    assert final.update(list(word[:3]) + [0]) == "д"
    assert final.update(list(word) + [1, 0]) == "а" and final.stopped
    assert final.finish(list(word) + [1, 1]) == ("", final.finish(list(word) + [1, 1])[1])


def test_final_text_under_remasking_comes_only_at_the_end():
    final = FinalText(Chars.decode, 0, {1}, live=False)
    assert final.update(ids("abc") + [0]) == ""
    delta, end = final.finish(ids("abcd"))
    assert delta == "abcd" and end.finish_reason == "length" and end.tokens == 4


def test_the_app_runs_in_process_and_describes_what_the_model_takes(models):
    """`sunfish.serve.build_app` is an ASGI app; /v1/sunfish lists only the sampler fields the process reads."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e .[serve])")
    from fastapi.testclient import TestClient

    import sunfish.serve

    with TestClient(sunfish.serve.build_app(models["ar"])) as client:
        info = client.get("/v1/sunfish").json()
        assert info["process"] == "autoregressive" and "temperature" in info["fields"]
        assert "steps" not in info["fields"] and "block_length" not in info["fields"]
        answer = client.post("/v1/completions", json={"prompt": "The cat", "max_tokens": 8, "seed": 1}).json()
        assert answer["choices"][0]["text"] == models["ar"].generate("The cat", 8, seed=1).text[len("The cat"):]
        refused = client.post("/v1/completions", json={"prompt": "x", "sunfish": {"steps": 4}})
        assert refused.status_code == 400 and "steps" in refused.json()["error"]["message"]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_public_checkpoints_serve_chat_through_their_own_template(tmp_path, family):
    """A LLaDA or Dream folder: chat renders with the tokenizer's template and the reply equals Model.chat's."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e .[serve])")
    from fastapi.testclient import TestClient

    import sunfish.serve
    from public_folders import write_dream, write_llada

    folder = (write_llada if family == "llada" else write_dream)(tmp_path / family)
    model = sunfish.load(folder, device="cpu")
    with TestClient(sunfish.serve.build_app(model)) as client:
        answer = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "seed": 4,
            "sunfish": {"steps": 8}}).json()
    assert answer["choices"][0]["message"]["content"] == model.chat("hi", 8, seed=4, steps=8).text
    assert answer["model"] == family
