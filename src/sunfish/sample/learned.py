"""The learned commit rule (after Learn2PD, "Learning to Parallel Decode", ICLR 2026): a tiny filter decides which
of a step's predictions to commit.

At each step of the active block, every masked position i gets a feature vector f_i of cheap statistics of the
model's prediction and of the canvas (FEATURES): the confidence of the drawn token, the top-1 minus top-2 margin,
the entropy over log V, the position in the block, the fraction of the block already decoded, the nearness
1 / d to the closest committed token, the EOS probability, and the mean EOS probability over the block's masks
from i on. A two-layer MLP maps the standardised f_i to a score s_i = sigmoid(g(f_i)); the step commits every
mask with s_i >= threshold, and at least one: the most confident (so a filter that passes nothing is the
one-token-per-step confidence sampler). The filter is trained (commit_tune.py) on the exact sampler's own
trajectory, with Learn2PD's label: does the position's current prediction already equal the token the exact
decoding finally writes there, i.e. would committing it now leave the output unchanged.

End of text: a second head h(f_i) predicts that the reference text has ended at i (its first EOS is at or
before i). When a committed position draws EOS and h(f_i) >= end_threshold, every mask of that row from i to
the canvas's end becomes EOS at once and the row stops (prompted generation with stop_at_eos only).

A filter is one safetensors file (about 2k parameters) whose metadata holds the JSON spec (CommitSpec): feature
names in input order, hidden width, both thresholds, the tokenizer's EOS id and vocabulary size, and how it was
trained. A checkpoint may keep its own as `commit_rule.safetensors` (`sunfish tune-commit` writes it there by
default).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sunfish.fileio import write_bytes_atomic
from sunfish.sample.draw import draw_step
from sunfish.sample.policies import entropy, top_ranked

FEATURES = ("confidence", "margin", "entropy", "position", "decoded", "nearness", "eos", "eos_after")
FILE_NAME = "commit_rule.safetensors"  # a checkpoint's own filter
_META_KEY = "sunfish_commit_rule"
_FORMAT = 1


@dataclass(frozen=True)
class CommitSpec:
    """What a filter file says about itself (stored as JSON in the safetensors metadata)."""

    features: tuple[str, ...]  # input order, names from FEATURES
    hidden: int  # width of both hidden layers of the commit head and of the end head's one
    threshold: float  # commit a mask whose score reaches this, in [0, 1]
    end_threshold: float | None  # end the row when a committed EOS's end score reaches this; None: no end head
    eos_id: int | None  # the tokenizer's EOS (the eos features read its probability)
    vocab_size: int  # the model's vocabulary: a filter belongs to one tokenizer
    trained: dict = field(default_factory=dict)  # provenance: checkpoint, prompts, reference setting, figures

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, **dataclasses.asdict(self)})


class CommitFilter(nn.Module):
    """Commit head: F -> hidden -> hidden -> 1; end head: F -> hidden -> 1; inputs standardised by (mean, std)."""

    def __init__(self, spec: CommitSpec):
        super().__init__()
        n, h = len(spec.features), spec.hidden
        self.spec = spec
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.commit = nn.Sequential(nn.Linear(n, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))
        self.end = nn.Sequential(nn.Linear(n, h), nn.SiLU(), nn.Linear(h, 1))

    def logits(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Commit and end logits (...,) of features (..., F)."""
        z = (feats - self.mean) / self.std
        return self.commit(z).squeeze(-1), self.end(z).squeeze(-1)

    def decide(self, feats: torch.Tensor, conf: torch.Tensor, candidates: torch.Tensor):
        """(ranking (B, n), count (B,), ends (B, n)): commit the count[b] best-ranked candidates of row b, which
        are those the filter passes, or the most confident one when it passes none; `ends` marks candidates
        whose end score reaches the end threshold. feats (B, n, F), conf (B, n) of the drawn tokens."""
        commit, end = self.logits(feats.to(self.mean.dtype))
        passes = (commit >= _logit(self.spec.threshold)) & candidates  # (B, n); sigmoid(commit) >= threshold
        count = torch.minimum(passes.sum(-1).clamp_min(1), candidates.sum(-1))
        ranking = torch.where(passes, 1.0 + conf, conf)  # passed ones first, then by confidence
        bar = self.spec.end_threshold
        ends = candidates & (end >= _logit(bar)) if bar is not None else torch.zeros_like(candidates)
        return ranking, count, ends


def _logit(p: float) -> float:
    """The logit of a probability bar: +inf at 1 (nothing passes), -inf at 0 (everything does)."""
    return math.inf if p >= 1 else -math.inf if p <= 0 else math.log(p / (1 - p))


def block_features(probs: torch.Tensor, drawn: torch.Tensor, candidates: torch.Tensor, before: torch.Tensor,
                   after: torch.Tensor, eos_id: int | None, names: tuple[str, ...] = FEATURES) -> torch.Tensor:
    """Features (B, n, F) of the active block's positions in the order of `names`. probs (B, n, V) of the step's
    draw, drawn (B, n), candidates (B, n): still masked; before / after (B,): whether the canvas column just
    before / after the block holds a committed token."""
    B, n, V = probs.shape
    probs = probs.float()
    top2 = probs.topk(min(2, V), dim=-1).values
    conf = probs.gather(-1, drawn[..., None]).squeeze(-1)
    pos = torch.arange(n, device=probs.device, dtype=torch.float32)
    eos = probs[..., eos_id] if eos_id is not None else torch.zeros_like(conf)
    cand = candidates.float()
    suffix_eos = (eos * cand).flip(-1).cumsum(-1).flip(-1)
    suffix_n = cand.flip(-1).cumsum(-1).flip(-1)
    values = {
        "confidence": conf,
        "margin": top2[..., 0] - (top2[..., 1] if V > 1 else 0.0),
        "entropy": entropy(probs) / math.log(max(V, 2)),
        "position": (pos / max(n - 1, 1)).expand(B, n),
        "decoded": (1.0 - cand.mean(-1, keepdim=True)).expand(B, n),
        "nearness": 1.0 / _distance_to_committed(candidates, before, after),
        "eos": eos,
        "eos_after": suffix_eos / suffix_n.clamp_min(1.0),
    }
    return torch.stack([values[name] for name in names], dim=-1)


def step_features(x: torch.Tensor, lo: int, hi: int, logits: torch.Tensor, cfg, generator, mask_id: int,
                  names: tuple[str, ...], eos_id: int | None):
    """One step on the block [lo, hi) of canvas x (B, L) with the block's logits (B, n, V): its draw (as every rule
    draws, sample/draw.py) and the features of it. Returns features (B, n, F), drawn (B, n), their confidences
    (B, n) and the candidates (B, n): the masked positions."""
    candidates = x[:, lo:hi] == mask_id  # (B, n)
    _, _, drawn, probs = draw_step(logits, candidates, cfg, generator)
    conf = probs.gather(-1, drawn[..., None]).squeeze(-1)  # (B, n)
    feats = block_features(probs, drawn, candidates, column_committed(x, lo - 1, mask_id),
                           column_committed(x, hi, mask_id), eos_id, names)
    return feats, drawn, conf, candidates


def _distance_to_committed(candidates: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(B, n) distance of each position to the nearest committed one: the block's non-candidates and the columns
    just outside it (at -1 and n) where `before` / `after` (B,) say they are committed; n + 1 when none is."""
    B, n = candidates.shape
    pos = torch.arange(n, device=candidates.device)
    far = n + 1
    left = torch.where(~candidates, pos, torch.full_like(pos, -far)).cummax(-1).values  # (B, n) last committed <= i
    left = torch.where(before[:, None], torch.maximum(left, torch.full_like(left, -1)), left)
    right = torch.where(~candidates, pos, torch.full_like(pos, 2 * far)).flip(-1).cummin(-1).values.flip(-1)
    right = torch.where(after[:, None], torch.minimum(right, torch.full_like(right, n)), right)
    return torch.minimum(pos - left, right - pos).clamp(1, far).float()


def column_committed(x: torch.Tensor, col: int, mask_id: int) -> torch.Tensor:
    """(B,) whether canvas column `col` holds a committed token (False outside the canvas)."""
    if col < 0 or col >= x.shape[1]:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    return x[:, col] != mask_id


class LearnedRule:
    """The learned rule inside the unmasking loop (unmask.denoise_blocks): one step's commits and end of text."""

    def __init__(self, filt: CommitFilter, path: str, mask_id: int, eos_id: int | None, stop: bool):
        self.filter, self.path, self.mask_id = filt, path, mask_id
        self.eos_id = eos_id if stop else None  # end rows early only when generation stops at EOS
        self.checked = False

    @staticmethod
    def of(cfg, mask_id: int, eos_id: int | None, device: torch.device) -> "LearnedRule | None":
        """The rule for sampler settings `cfg` (None unless cfg.rule is learned); refuses what it cannot run."""
        from sunfish.config import CommitRule, RemaskKind

        if cfg.rule is not CommitRule.LEARNED:
            return None
        if cfg.remask is not RemaskKind.NONE:
            raise ValueError("the learned commit rule does not take committed tokens back; drop --remask")
        filt = load_filter(cfg.commit_model, device)
        return LearnedRule(filt, cfg.commit_model, mask_id, eos_id, cfg.stop_at_eos)

    def choose(self, x: torch.Tensor, lo: int, hi: int, logits: torch.Tensor, cfg, generator):
        """One step on the block [lo, hi) of canvas x (B, L) with its logits (B, n, V): positions to commit (B, n),
        drawn tokens (B, n), their confidences (B, n), nothing to remask (B, n), and the canvas positions (B, L)
        to fill with EOS because the row's text is over (None: none)."""
        if not self.checked:
            check_filter(self.filter, self.path, logits.shape[-1], self.eos_id)
            self.checked = True
        spec = self.filter.spec
        feats, drawn, conf, candidates = step_features(x, lo, hi, logits, cfg, generator, self.mask_id, spec.features,
                                                       spec.eos_id)
        ranking, count, ends = self.filter.decide(feats, conf, candidates)
        chosen = top_ranked(ranking, candidates, count)
        return chosen, drawn, conf, torch.zeros_like(chosen), self._tail(x, lo, chosen & ends, drawn)

    def _tail(self, x: torch.Tensor, lo: int, ending: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor | None:
        """(B, L) the masks of each row from its first committed EOS that the end head passed (`ending` (B, n))."""
        if self.eos_id is None:
            return None
        fire = ending & (drawn == self.eos_id)  # (B, n)
        if not bool(fire.any()):
            return None
        first = torch.where(fire.any(-1), lo + fire.float().argmax(-1), x.shape[1])  # (B,)
        cols = torch.arange(x.shape[1], device=x.device)
        return (cols[None, :] > first[:, None]) & (x == self.mask_id)


# ---- the file ----------------------------------------------------------------------------------------


def filter_bytes(filt: CommitFilter) -> bytes:
    """The filter as safetensors bytes, its spec in the metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in filt.state_dict().items()}
    return save(tensors, metadata={_META_KEY: filt.spec.to_json()})


def save_filter(path: str | Path, filt: CommitFilter) -> Path:
    """Write the filter to `path` through a temporary file and os.replace (never a half file)."""
    path = Path(path)
    write_bytes_atomic(path, filter_bytes(filt))
    return path


def load_filter(path: str | Path, device: torch.device | str = "cpu") -> CommitFilter:
    """The filter in `path` on `device`, or a ValueError in one sentence (no file, not a filter, unknown features)."""
    if not str(path):
        raise ValueError("the learned commit rule needs a filter: pass --sampler.commit_model FILE (written by "
                         "`sunfish tune-commit CKPT`)")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"there is no commit model at '{path}'; train one with `sunfish tune-commit CKPT --out {path}`")
    stat = path.stat()
    spec, tensors = _read(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    filt = CommitFilter(spec)
    try:
        filt.load_state_dict(tensors)
    except RuntimeError:
        raise ValueError(f"commit model '{path}' does not match its own spec ({len(spec.features)} features, hidden "
                         f"{spec.hidden}); write it again with `sunfish tune-commit`") from None
    return filt.to(device).eval()


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int, size: int) -> tuple[CommitSpec, dict[str, torch.Tensor]]:
    """Spec and tensors of a filter file (cached by path, modification time and size)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    body = Path(path).read_bytes()
    try:
        tensors = load(body)
        header_len = int.from_bytes(body[:8], "little")
        meta = json.loads(body[8 : 8 + header_len]).get("__metadata__", {})
        tree = json.loads(meta[_META_KEY])
    except (SafetensorError, KeyError, ValueError, TypeError):
        raise ValueError(f"'{path}' is not a commit model written by `sunfish tune-commit`") from None
    unknown = [f for f in tree.get("features", []) if f not in FEATURES]
    if tree.get("format") != _FORMAT or unknown or not tree.get("features"):
        what = f"features Sunfish does not compute ({', '.join(unknown)})" if unknown else "an unknown spec format"
        raise ValueError(f"commit model '{path}' uses {what}; Sunfish computes {', '.join(FEATURES)}: train it again "
                         "with `sunfish tune-commit`")
    tree.pop("format")
    tree["features"] = tuple(tree["features"])
    return CommitSpec(**tree), tensors


def check_filter(filt: CommitFilter, path: str | Path, vocab_size: int, eos_id: int | None) -> None:
    """Refuse a filter trained for another tokenizer (vocabulary size or EOS id)."""
    spec = filt.spec
    if spec.vocab_size != vocab_size or (eos_id is not None and spec.eos_id is not None and spec.eos_id != eos_id):
        raise ValueError(f"commit model '{path}' was trained for a model with {spec.vocab_size} tokens and EOS id "
                         f"{spec.eos_id}, not this one ({vocab_size} tokens, EOS {eos_id}); train one for this model "
                         "with `sunfish tune-commit`")
