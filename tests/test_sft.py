"""Supervised fine-tuning: the prompt is never corrupted or scored, assistant turns are, a tiny model learns a
handful of conversations and answers them through the chat template, and bad data is one sentence."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

import sunfish
from sunfish.cli import main
from sunfish.config import ProcessConfig, SFTPad
from sunfish.data.sft import encode_conversations, read_conversations
from sunfish.process.sft import ar_sft_loss, block_sft_loss, masked_sft_loss
from sunfish.sample.chat import PAD, PROMPT, RESPONSE, conversation_ids

from conftest import cli_error
from serving import SMALL

CONVERSATIONS = [("Who has the red ball?", "Lily has it."), ("Where is the cat?", "In the garden."),
                 ("What is the dog's name?", "Max."), ("Кто спит?", "Кот спит.")]


class PositionModel(torch.nn.Module):
    """logits at position i = column i of one weight matrix, whatever the input: the gradient of a loss shows which
    positions it scores; the inputs it saw are recorded."""

    needs_time = False

    def __init__(self, length: int, vocab: int):
        super().__init__()
        self.length = length
        self.lm_head = torch.nn.Linear(length, vocab, bias=False)
        self.seen: list[torch.Tensor] = []

    def hidden(self, tokens, t=None, **kw):
        self.seen.append(tokens.clone())
        return torch.eye(self.length)[None, :, :].expand(tokens.shape[0], -1, -1).repeat(1, tokens.shape[1] // self.length, 1)

    def head(self, h):
        return self.lm_head(h)

    def forward(self, tokens):
        eye = torch.eye(self.length)[: tokens.shape[1]]
        return self.lm_head(eye)[None].expand(tokens.shape[0], -1, -1)


def batch(length=12, vocab=20, mask_id=3):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, vocab, (6, length), generator=g)
    roles = torch.full((6, length), PROMPT)
    roles[:, 5:9] = RESPONSE
    roles[:, 9:] = PAD
    roles[:3, 9:] = RESPONSE  # EOS padding is scored like the reply
    return x0, roles


@pytest.mark.parametrize("loss", [masked_sft_loss, block_sft_loss, ar_sft_loss])
def test_the_prompt_and_padding_are_never_corrupted_or_scored(loss):
    x0, roles = batch()
    cfg = ProcessConfig(block_size=4)
    for seed in range(20):
        model = PositionModel(12, 20)
        out = loss(model, x0, roles, cfg, 3, torch.Generator().manual_seed(seed))
        out.loss.backward()
        scored = model.lm_head.weight.grad.abs().sum(0) > 0  # (L,) positions whose prediction the loss used
        targets = torch.arange(12) if loss is not ar_sft_loss else torch.arange(12) + 1  # AR: position i predicts i + 1
        assert not scored[(targets < 12) & (roles[0].roll(-int(loss is ar_sft_loss)) != RESPONSE)[: 12]].any()
        for seen in model.seen:
            clean = seen[:, :12]  # block diffusion: the noisy copy comes first
            assert torch.equal(clean[roles != RESPONSE], x0[roles != RESPONSE])
    assert scored.any()


def test_multi_turn_conversations_score_assistant_turns_only(tmp_path):
    model = sunfish.load(base_run(tmp_path), device="cpu")
    tok = model.tokenizer.with_chat_tokens()
    chat = tok.chat_ids
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Bye!"}]
    ids, roles = conversation_ids(tok, messages)
    second_user = [i for i, t in enumerate(ids) if t == chat["user"]][1]
    replies = [tok.decode([i for i, r in zip(ids[a:b], roles[a:b]) if r == RESPONSE], skip_special=False)
               for a, b in ((0, second_user), (second_user, len(ids)))]
    assert replies == ["Hello.<|end|>", "Bye!<|end|>"]
    assert sum(r == RESPONSE for r in roles) == len(tok.encode("Hello.")) + len(tok.encode("Bye!")) + 2
    data = encode_conversations([messages], tok, 64, SFTPad.MASK)
    assert data.roles[0, len(ids):].eq(PAD).all() and data.tokens[0, len(ids):].eq(tok.pad_id).all()
    data = encode_conversations([messages], tok, 64, SFTPad.EOS)
    assert data.roles[0, len(ids):].eq(RESPONSE).all() and data.tokens[0, len(ids):].eq(tok.eos_id).all()


def base_run(tmp_path, process: str = "masked"):
    out = tmp_path / f"base-{process}"
    if not out.exists():
        assert main(["train", "--preset", "nano", "--process", process, "--out", str(out), "--steps", "5", *SMALL,
                     "--model.d_model=64", "--model.n_layers=2", "--model.n_heads=4"]) == 0
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("process", ["masked", "ar"])
def test_a_tiny_model_learns_a_handful_of_conversations_and_answers_them(tmp_path, process, monkeypatch, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": p, "response": r} for p, r in CONVERSATIONS * 3])
    out = tmp_path / "sft"
    steps = {"masked": "600", "ar": "200"}[process]
    assert main(["sft", str(base_run(tmp_path, process)), "--data", str(data), "--out", str(out), "--steps", steps,
                 "--optim.lr=0.01", "--optim.warmup_steps=10", "--train.batch_size=8", "--train.seq_len=36",
                 "--data.val_fraction=0.1", "--no-progress"]) == 0
    model = sunfish.load(out, device="cpu")
    assert model.tokenizer.chat_ids is not None and model.cfg.sft.base
    settings = {"steps": 16} if process == "masked" else {}
    for prompt, reply in CONVERSATIONS:
        assert model.chat(prompt, max_new_tokens=16, **settings).text == reply
    report = json.loads((out / "sft_data.json").read_text())
    assert report == {"data": [str(data)], "skipped": {}, "train": 11, "val": 1}
    lines = [line for prompt, _ in CONVERSATIONS for line in (prompt, "/reset")]  # each question as a first turn
    flags = ["--steps", "16"] if process == "masked" else []
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    capsys.readouterr()
    assert main(["chat", str(out), "--length", "16", *flags]) == 0
    assert capsys.readouterr().out.splitlines() == [reply for _, reply in CONVERSATIONS]


def test_bad_conversation_files_are_one_sentence(tmp_path, capsys):
    base = str(base_run(tmp_path))

    def error(rows, name="bad.jsonl"):
        path = tmp_path / name
        path.write_text(rows, encoding="utf-8")
        return cli_error(capsys, ["sft", base, "--data", str(path), "--out", str(tmp_path / "o"), "--steps", "1"])

    assert "bad.jsonl:2 is not valid JSON" in error('{"prompt": "a", "response": "b"}\n{oops\n')
    assert "unknown role 'robot'" in error('{"messages": [{"role": "robot", "content": "x"}]}\n')
    assert "bad.jsonl:1: a row must be" in error('{"question": "a"}\n')
    assert "SFT needs at least 2" in error('{"messages": [{"role": "user", "content": "x"}]}\n' * 3)
    assert "does not exist" in cli_error(capsys, ["sft", base, "--data", str(tmp_path / "none.jsonl"), "--out",
                                                  str(tmp_path / "o")])
    conversations, skipped = read_conversations([write_jsonl(tmp_path / "mix.jsonl", [
        {"prompt": "a", "response": "b"}, {"messages": [{"role": "user", "content": "x"}]}])])
    assert len(conversations) == 1 and skipped == {"no assistant turn": 1}


def test_continuous_models_are_refused(tmp_path, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": p, "response": r} for p, r in CONVERSATIONS])
    words = cli_error(capsys, ["sft", str(base_run(tmp_path, "continuous")), "--data", str(data), "--out",
                               str(tmp_path / "o"), "--steps", "1"])
    assert "not defined for continuous" in words
