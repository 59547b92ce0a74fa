"""`sunfish chat` and streamed text: each reply is `Model.chat` of the whole conversation so far with seed + i,
/reset and /system start a fresh conversation, old turns give way to the context, and the pieces `on_text`
receives put together are the returned text (as they are committed, or at the end under remasking)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from sunfish.api import Model, load
from sunfish.cli import main
from sunfish.sample.prompt import PromptError

from public_folders import EOT, write_llada

SRC = Path(__file__).resolve().parents[1] / "src"
FLAGS = ["--seed", "5", "--length", "8", "--steps", "8", "--temperature", "1"]
SETTINGS = dict(max_new_tokens=8, steps=8, temperature=1.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("chat") / "run"
    assert main(["train", "--preset", "nano", "--out", str(out), "--steps", "5", "--model.d_model=32",
                 "--model.n_layers=1", "--model.n_heads=2", "--model.context=128", "--train.batch_size=4",
                 "--train.val_every=0", "--data.val_fraction=0.2", "--data.tokenizer=bpe", "--data.bpe_vocab=300",
                 "--data.synth_docs=400", "--no-progress"]) == 0
    return str(out)


@pytest.fixture(scope="module")
def model(run) -> Model:
    return load(run, device="cpu")


def chat_session(monkeypatch, capsys, argv: list[str], lines: list[str], tty: bool = False):
    """Run `sunfish chat` in this process on `lines` as stdin: (exit code, stdout, stderr, the conversations
    sent to Model.chat)."""
    sent = []
    chat = Model.chat

    def spy(self, conversation, *args, **kwargs):
        sent.append([dict(m) for m in conversation])
        return chat(self, conversation, *args, **kwargs)

    class Stdin(io.StringIO):
        def isatty(self) -> bool:
            return tty

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(Model, "chat", spy)
        patch.setattr(sys, "stdin", Stdin("".join(line + "\n" for line in lines)))
        code = main(["chat", *argv])
    out, err = capsys.readouterr()
    return code, out, err, sent


def replies(model: Model, messages: list[str], system: str | None = None, seed: int = 5) -> tuple[str, list]:
    """What a session of `messages` should print, and the conversation of each turn."""
    history, printed, sent = [], "", []
    for i, message in enumerate(messages):
        history.append({"role": "user", "content": message})
        sent.append(list(history))
        reply = model.chat(history, system=system, seed=seed + i, **SETTINGS)
        printed += reply.text + "\n"
        history.append({"role": "assistant", "content": reply.text})
    return printed, sent


def test_each_reply_is_the_models_reply_to_the_whole_conversation(run, model, monkeypatch, capsys):
    messages = ["hello there", "how are you?", "go on"]
    code, out, err, sent = chat_session(monkeypatch, capsys, [run, *FLAGS], [messages[0], "", "  ", *messages[1:]])
    expected, conversations = replies(model, messages)
    assert code == 0 and out == expected and err == ""
    assert sent == conversations and [len(c) for c in sent] == [1, 3, 5]  # user, assistant, user, ...


def test_reset_and_system_start_a_fresh_conversation_and_exit_ends_it(run, model, monkeypatch, capsys):
    lines = ["hello there", "/reset", "hello there", "/system Be kind.", "hello there", "/help", "/nope", "/exit",
             "never sent"]
    code, out, err, sent = chat_session(monkeypatch, capsys, [run, *FLAGS], lines)
    first, _ = replies(model, ["hello there"])
    kind, _ = replies(model, ["hello there"], system="Be kind.")
    assert code == 0 and len(sent) == 3 and all(len(c) == 1 for c in sent)
    assert out.startswith(first + first + kind) and "/system TEXT" in out[len(first + first + kind):]
    assert err.splitlines() == ["conversation cleared", "system message set; conversation cleared",
                                "unknown command /nope; /help lists the commands"]


def test_a_terminal_gets_a_prompt_and_the_pipe_gets_none(run, model, monkeypatch, capsys):
    code, out, err, _ = chat_session(monkeypatch, capsys, [run, *FLAGS], ["hello there"], tty=True)
    first, _ = replies(model, ["hello there"])
    assert code == 0 and out == f"you> {first}you> \n" and "/help lists the commands" in err


def test_old_turns_give_way_to_the_context_and_a_message_too_long_is_refused(run, model, monkeypatch, capsys):
    messages = [f"message number {i}: the cat sat on the mat and the dog ran to the park" for i in range(4)]
    too_long = "the cat sat on the mat " * 40
    code, out, err, sent = chat_session(monkeypatch, capsys, [run, *FLAGS[:3], "32", *FLAGS[4:]],
                                        [*messages, too_long, "bye"])
    assert code == 0 and "does not fit the model's context of 128 tokens" in err and "dropped the" in err
    assert sent[-1][-1]["content"] == "bye" and too_long not in str(sent)
    history = []
    for i, conversation in enumerate(sent):  # each turn: the kept newest turns of the history with the message
        full = history + [conversation[-1]]
        assert conversation == full[len(full) - len(conversation):] and len(conversation) % 2 == 1
        if len(conversation) < len(full):
            with pytest.raises(PromptError):
                model.chat(full, seed=5 + i, **(SETTINGS | {"max_new_tokens": 32}))
        reply = model.chat(conversation, seed=5 + i, **(SETTINGS | {"max_new_tokens": 32}))
        history = conversation + [{"role": "assistant", "content": reply.text}]
    assert out.endswith(reply.text + "\n") and len(sent) == 5


def test_chat_exits_cleanly_through_a_pipe_and_a_bad_path_is_one_sentence(run, model, tmp_path, monkeypatch, capsys):
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "sunfish", "chat", run, *FLAGS], input="hello there\n/exit\nmore\n",
                          capture_output=True, text=True, env=env, timeout=120)
    first, _ = replies(model, ["hello there"])
    assert done.returncode == 0 and done.stdout == first and done.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "sunfish", "chat", str(tmp_path / "nowhere")], input="hi\n",
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and bad.stderr.startswith("sunfish: error:")
    code, out, err, sent = chat_session(monkeypatch, capsys, [run, "--solver", "ddim"], ["hi"])
    assert code == 2 and sent == [] and len(err.strip().splitlines()) == 1 and "solver" in err


@pytest.mark.parametrize("settings", [{}, {"temperature": 1.0}, {"temperature": 1.0, "block_length": 8}])
def test_streamed_pieces_are_the_text_as_it_is_committed(model, settings):
    pieces, generated = [], []
    reply = model.chat("hello there", max_new_tokens=24, steps=24, seed=1, on_text=pieces.append, **settings)
    assert "".join(pieces) == reply.text and len(pieces) > 1 and all(pieces)
    plain = model.chat("hello there", max_new_tokens=24, steps=24, seed=1, **settings)
    assert (plain.text, plain.ids, plain.steps, plain.nfe) == (reply.text, reply.ids, reply.steps, reply.nfe)
    out = model.generate("Once upon", max_new_tokens=24, steps=24, seed=1, on_text=generated.append, **settings)
    assert "".join(generated) == out.text[len("Once upon"):] and len(generated) > 1
    assert out.text == model.generate("Once upon", max_new_tokens=24, steps=24, seed=1, **settings).text


def test_under_remasking_the_text_comes_whole_at_the_end(model):
    pieces, generated = [], []
    reply = model.chat("hello there", max_new_tokens=24, steps=24, seed=1, temperature=1.0, remask="cap",
                       on_text=pieces.append)
    assert pieces == [reply.text] and reply.text
    out = model.generate("Once upon", max_new_tokens=24, steps=24, seed=1, temperature=1.0, remask="cap",
                         on_text=generated.append)
    assert generated == [out.text[len("Once upon"):]]
    with pytest.raises(ValueError, match="on_text follow one prompt"):
        model.generate(["a", "b"], on_text=print)


def test_a_trace_and_the_stream_both_follow_the_decoding(model, tmp_path):
    pieces = []
    reply = model.chat("hello there", max_new_tokens=16, steps=16, seed=2, temperature=1.0, on_text=pieces.append,
                       trace=tmp_path / "t.gif")
    assert "".join(pieces) == reply.text and Path(reply.trace).stat().st_size > 0


def test_a_chat_template_streams_up_to_its_end_of_turn(tmp_path, monkeypatch, capsys):
    folder = write_llada(tmp_path / "llada")
    llada = load(folder, device="cpu")
    pieces = []
    reply = llada.chat("hi", max_new_tokens=12, steps=12, on_text=pieces.append)
    assert "".join(pieces) == reply.text and len(pieces) > 1 and EOT not in reply.ids
    code, out, err, sent = chat_session(monkeypatch, capsys, [str(folder), "--length", "4", "--steps", "4"],
                                        ["hi", "and then?"])
    first = llada.chat("hi", max_new_tokens=4, steps=4)
    second = llada.chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": first.text},
                         {"role": "user", "content": "and then?"}], max_new_tokens=4, steps=4, seed=1)
    assert code == 0 and out == first.text + "\n" + second.text + "\n" and len(sent[1]) == 3 and err == ""
