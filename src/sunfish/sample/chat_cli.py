"""`sunfish chat PATH`: a conversation with a model in the terminal, each reply printed as it is committed.

    sunfish chat runs/quickstart                              # type a message and Enter; /help lists the commands
    sunfish chat runs/quickstart --system "Be brief." --temperature 0.8 --seed 7
    sunfish chat LLaDA-8B-Instruct --length 128 --steps 64 --block-length 32   # the tokenizer's chat template
    printf 'hi\\nwhat is your name?\\n' | sunfish chat runs/quickstart   # not a terminal: the replies only
    sunfish chat runs/quickstart --sampler.remask=cap         # remasking: each reply appears whole at the end

Every message is sent with the conversation so far, which `Model.chat` renders with the model's chat template
(or the plain default of sample/chat.py). Turn i of a conversation (counted from 0, again after /reset) is
decoded with seed + i, so a session replays exactly. When the conversation outgrows the model's context, its
oldest turns are dropped (the system message stays). Replies and /help go to stdout; notices to stderr.

`register(verbs)` adds the verb; `dispatch(args)` runs it and returns its exit code, or None for a verb that is
not ours."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, TextIO

from sunfish.flags import add_runtime, add_sampler, given
from sunfish.sample.chat import as_messages, chat_format

if TYPE_CHECKING:
    from sunfish.api import Model

PROMPT = "you> "
HELP = """/reset          forget the conversation
/system TEXT    set the system message (none without TEXT) and forget the conversation
/help           this list
/exit           leave (as does end of input, Ctrl+D)"""


def register(verbs: argparse._SubParsersAction) -> None:
    c = verbs.add_parser("chat", help="chat with a model in the terminal; replies appear as they are committed",
                         description="Reads messages line by line from stdin; /help lists the commands.")
    c.add_argument("path", help="run folder, checkpoint, exported folder, adapted run, or a LLaDA/Dream folder")
    c.add_argument("--system", metavar="TEXT", help="a system message before the conversation (/system changes it)")
    c.add_argument("--seed", type=int, default=0, metavar="N",
                   help="turn i of a conversation is decoded with seed + i (default 0)")
    add_runtime(c)
    add_sampler(c)
    c.set_defaults(config_sections={"sampler": None})


def dispatch(args: argparse.Namespace) -> int | None:
    if args.verb != "chat":
        return None
    import sunfish

    settings = given(args, ("sampler",)).get("sampler", {})
    model = sunfish.load(args.path, device=args.device, dtype=args.dtype, quantize=args.quantize)
    length = model.sampler(**settings).length  # refuses settings the model cannot use before any input is read
    session = Session(model, settings, system=args.system or None, seed=args.seed, length=length)
    tty = sys.stdin.isatty()
    if tty:
        print(f"chatting with {args.path} (context {model.cfg.model.context} tokens, replies up to {session.length}); "
              "/help lists the commands", file=sys.stderr)
    for line in _lines(sys.stdin, tty):
        if line.strip() and not session.take(line.strip(), sys.stdout, sys.stderr):
            break
    return 0


def _lines(stdin: TextIO, tty: bool) -> Iterator[str]:
    """The user's lines: with the `you> ` prompt (and line editing) at a terminal, else plainly until EOF."""
    if not tty:
        for line in stdin:
            yield line.rstrip("\r\n")
        return
    try:
        import readline  # noqa: F401  (input() then edits lines and keeps their history)
    except ImportError:
        pass
    while True:
        try:
            yield input(PROMPT)
        except EOFError:
            print()
            return


@dataclass
class Session:
    """One terminal conversation: the turns so far and how each reply is decoded."""

    model: Model
    settings: dict  # sampler settings from the command line
    system: str | None
    seed: int
    length: int  # tokens of a reply at most
    history: list[dict] = field(default_factory=list)  # user and assistant turns, oldest first
    turn: int = 0  # replies in this conversation so far

    def reset(self) -> None:
        self.history, self.turn = [], 0

    def take(self, line: str, out: TextIO, err: TextIO) -> bool:
        """Answer one line (a message or a command); False when the session ends."""
        word, _, rest = line.partition(" ")
        if not line.startswith("/"):
            self.reply(line, out, err)
        elif word == "/exit":
            return False
        elif word == "/reset":
            self.reset()
            print("conversation cleared", file=err)
        elif word == "/system":
            self.system = rest.strip() or None
            self.reset()
            print(f"system message {'set' if self.system else 'removed'}; conversation cleared", file=err)
        elif word == "/help":
            print(HELP, file=out)
        else:
            print(f"unknown command {word}; /help lists the commands", file=err)
        return True

    def reply(self, message: str, out: TextIO, err: TextIO) -> None:
        """Send the conversation with `message` and print the reply as it is committed."""
        history = self.history + [{"role": "user", "content": message}]
        kept = fit(self.model, history, self.system, self.length)
        if kept is None:
            print(f"that message does not fit the model's context of {self.model.cfg.model.context} tokens with a "
                  f"reply of {self.length} tokens; write a shorter one or lower --length", file=err)
            return
        if len(kept) < len(history):
            print(f"dropped the {len(history) - len(kept)} oldest turns to fit the model's context", file=err)

        def write(piece: str) -> None:
            out.write(piece)
            out.flush()

        reply = self.model.chat(kept, system=self.system, seed=self.seed + self.turn, on_text=write, **self.settings)
        out.write("\n")
        out.flush()
        self.history = kept + [{"role": "assistant", "content": reply.text}]
        self.turn += 1


def fit(model: Model, history: list[dict], system: str | None, length: int) -> list[dict] | None:
    """The newest turns of `history` (user and assistant turns ending with the user's) whose prompt, with the
    system message and a reply of `length` tokens, fits the model's context; None when the last message alone
    does not."""
    for start in range(0, len(history), 2):  # whole exchanges, so the kept turns still begin with the user's
        if prompt_tokens(model.tokenizer, as_messages(history[start:], system)) + length <= model.cfg.model.context:
            return history[start:]
    return None


def prompt_tokens(tok, messages: list[dict]) -> int:
    """Tokens of the prompt `Model.chat` decodes after for `messages` (BOS included)."""
    return len(chat_format(tok, messages).ids)
