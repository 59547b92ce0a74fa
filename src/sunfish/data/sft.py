"""Conversations for supervised fine-tuning: read, checked, encoded with the chat template, and batched.

Input: `.jsonl` files (or folders of them) whose rows are `{"prompt": ..., "response": ...}` (optionally with
`"system"`) or `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`, and local Hugging Face
datasets (a `save_to_disk` folder) with the same columns. A row that is not one of these shapes, or names an
unknown role, is an error (one sentence with its file and line). A conversation without an assistant turn, or
longer than the sequence length, is skipped and counted (`Conversations.skipped`, in the run's log).

Each conversation becomes one sequence of `seq_len` tokens (`sample/chat.py`, `conversation_ids`): its token ids,
and each token's role, PROMPT (system and user turns, the role tokens: clean and never scored), RESPONSE (the
assistant's turns and the token ending each) or PAD. The tail is filled per `sft.pad`: EOS tokens with the
RESPONSE role (masked and scored like the reply, as LLaDA pads, so the model learns where the answer ends), or
PAD tokens with the PAD role (never masked, never scored). A batch is (B, 2, L): row 0 the tokens, row 1 the roles.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sunfish.config import SFTPad
from sunfish.data.sources import DataError
from sunfish.sample.chat import PAD, RESPONSE, conversation_ids

ROLES = ("system", "user", "assistant")


def _messages(row: Any, where: str) -> list[dict]:
    """A row as [{"role", "content"}, ...], or a DataError naming `where`."""
    if isinstance(row, dict) and "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataError(f"{where}: \"messages\" must be a list of {{\"role\", \"content\"}} objects")
        for m in messages:
            if m.get("role") not in ROLES:
                raise DataError(f"{where}: unknown role {m.get('role')!r}; use system, user or assistant")
            if not isinstance(m.get("content"), str):
                raise DataError(f"{where}: a message's \"content\" must be a string")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
        system = row.get("system")
        head = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        return head + [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    raise DataError(f"{where}: a row must be {{\"prompt\": ..., \"response\": ...}} or {{\"messages\": [...]}} with "
                    "string values")


def _rows(path: Path):
    """(where, row) of a .jsonl file or a saved Hugging Face dataset."""
    if _is_dataset(path):
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(str(path))
        if isinstance(data, DatasetDict):
            data = data["train"] if "train" in data else next(iter(data.values()))
        for i, row in enumerate(data):
            yield f"{path} row {i + 1}", row
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{n} is not valid JSON ({err.msg}); write one JSON object per line") from None


def _is_dataset(path: Path) -> bool:
    """A folder written by `datasets`' save_to_disk."""
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def _files(paths: list[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"'{p}' does not exist; pass .jsonl files, folders of them, or a saved dataset folder")
        if p.is_dir() and not _is_dataset(p):
            out += sorted(p.rglob("*.jsonl"))
        else:
            out.append(p)
    if not out:
        raise DataError(f"no .jsonl files in {', '.join(map(str, paths))}; SFT data is JSON lines of conversations")
    return out


def read_conversations(paths: list[str | Path]) -> tuple[list[list[dict]], Counter]:
    """Every conversation in `paths`, and how many rows were skipped and why."""
    conversations, skipped = [], Counter()
    for path in _files(paths):
        for where, row in _rows(path):
            messages = _messages(row, where)
            if not any(m["role"] == "assistant" for m in messages):
                skipped["no assistant turn"] += 1
                continue
            conversations.append(messages)
    return conversations, skipped


@dataclass
class Conversations:
    """Encoded conversations of one split; the interface of the pretraining token streams (len, fingerprint,
    check_length, batches)."""

    tokens: torch.Tensor  # (N, L) ids
    roles: torch.Tensor  # (N, L) PROMPT, RESPONSE or PAD
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def fingerprint(self) -> str:
        return hashlib.sha256(self.tokens.numpy().tobytes() + self.roles.numpy().tobytes()).hexdigest()[:16]

    def check_length(self, seq_len: int, name: str) -> None:
        if self.tokens.shape[0] == 0:
            raise DataError(f"the {name} split has no conversation that fits {seq_len} tokens "
                            f"(skipped: {describe_skipped(self.skipped)}); raise --train.seq_len or shorten them")
        if self.tokens.shape[1] != seq_len:
            raise DataError(f"the {name} conversations were encoded for {self.tokens.shape[1]} tokens, not {seq_len}")

    def batches(self, seq_len: int, seed: int, rank: int = 0, world: int = 1) -> "RandomConversations":
        return RandomConversations(self, seed, rank, world)


class RandomConversations:
    """Batches (B, 2, L) of conversations drawn at random; the position is the generator's state."""

    def __init__(self, data: Conversations, seed: int, rank: int = 0, world: int = 1):
        self.data, self.rank, self.world = data, rank, world
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self, batch_size: int) -> torch.Tensor:
        rows = torch.randint(0, self.data.tokens.shape[0], (batch_size * self.world,), generator=self.generator)
        rows = rows[self.rank * batch_size : (self.rank + 1) * batch_size]
        return torch.stack([self.data.tokens[rows], self.data.roles[rows]], dim=1)  # (B, 2, L)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def restore(self, state: Any) -> None:
        if not isinstance(state, torch.Tensor):
            raise DataError("the checkpoint's data position is not from conversations; resume with the SFT data it used")
        self.generator.set_state(state)


def encode_conversations(conversations: list[list[dict]], tok, seq_len: int, pad: SFTPad,
                         skipped: Counter | None = None) -> Conversations:
    """Each conversation as `seq_len` tokens with roles, padded per `pad`; longer ones are skipped and counted."""
    skipped = Counter() if skipped is None else skipped
    tokens, roles = [], []
    fill, fill_role = (tok.eos_id, RESPONSE) if pad is SFTPad.EOS else (tok.pad_id, PAD)
    for messages in conversations:
        ids, role = conversation_ids(tok, messages)
        if len(ids) > seq_len:
            skipped[f"longer than {seq_len} tokens"] += 1
            continue
        tokens.append(ids + [fill] * (seq_len - len(ids)))
        roles.append(role + [fill_role] * (seq_len - len(ids)))
    empty = torch.zeros((0, seq_len), dtype=torch.long)
    return Conversations(tokens=torch.tensor(tokens, dtype=torch.long) if tokens else empty,
                         roles=torch.tensor(roles, dtype=torch.long) if roles else empty, skipped=skipped)


def describe_skipped(skipped: Counter) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "none"
