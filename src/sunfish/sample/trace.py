"""Record and render how a masked-diffusion sample is revealed, step by step.

``TraceRecorder`` is a sampler callback that keeps one batch row as a list of
``Frame``s; ``write_trace`` renders them to an animated GIF or an H.264 MP4 in
which masked positions are dim boxes that turn into text as tokens are committed.
Pillow, imageio and imageio-ffmpeg are optional (``pip install sunfish[trace]``).
"""

from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

KNOWN, MASKED, REVEALED = 0, 1, 2  # Frame.state codes
HOLD_SECONDS = 2.0  # how long the last frame stays on screen
_BG = (13, 17, 23)
# one colour per layer; the palette holds 16 anti-aliasing levels from _BG to each
_COLORS = [(48, 54, 61), (125, 133, 144), (230, 237, 243), (255, 184, 48), (139, 148, 158)]
_MASK, _PROMPT, _TEXT, _NEW, _HEADER = range(len(_COLORS))


@dataclass(frozen=True)
class Frame:
    """One row of the canvas after a step: text and state per position."""

    step: int
    pieces: tuple[str, ...]  # display text per position (masked positions get the mask symbol)
    state: tuple[int, ...]  # KNOWN (prompt or revealed earlier), MASKED, REVEALED (this step)


class TraceRecorder:
    """Callback for the sampler that records frames of one row of the batch.

    ``token_text`` maps a token id to its display text (it is called once per id);
    only positions ``start:end`` of batch row ``row`` are kept.
    """

    def __init__(self, token_text: Callable[[int], str], *, row: int = 0, start: int = 0,
                 end: int | None = None, mask_symbol: str = "░") -> None:
        self.token_text = lru_cache(maxsize=None)(token_text)  # one call per token id
        self.row, self.span, self.mask_symbol = row, slice(start, end), mask_symbol
        self.frames: list[Frame] = []

    def start(self, tokens: torch.Tensor, masked: torch.Tensor) -> None:
        """Forget earlier frames and record the initial canvas as frame step 0."""
        self.frames = []
        self._record(0, tokens, masked, None)

    def __call__(self, info: Any) -> None:
        """Record the canvas after one step (``info`` has step, tokens, masked, revealed)."""
        self._record(int(info.step), info.tokens, info.masked, info.revealed)

    def _record(self, step: int, tokens: torch.Tensor, masked: torch.Tensor,
                revealed: torch.Tensor | None) -> None:
        ids = tokens[self.row, self.span].tolist()
        mask = masked[self.row, self.span].tolist()
        new = revealed[self.row, self.span].tolist() if revealed is not None else [False] * len(ids)
        pieces = tuple(self.mask_symbol if m else self.token_text(i) for i, m in zip(ids, mask))
        state = tuple(MASKED if m else REVEALED if r else KNOWN for m, r in zip(mask, new))
        self.frames.append(Frame(step, pieces, state))


def write_trace(frames: Sequence[Frame], path: str | os.PathLike, *, fps: float = 8.0,
                width: int = 960, title: str | None = None) -> Path:
    """Render ``frames`` to ``path`` (.gif or .mp4) atomically and return the path.

    The layout comes from the last frame, so every frame has the same size
    (``width`` and the height are rounded up to even numbers for H.264).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"cannot write a trace to '{path}': use a .gif or .mp4 file name")
    if not frames:
        raise ValueError("cannot write a trace without frames: record at least one step")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    try:  # optional dependencies, imported lazily so that sunfish works without them
        for name in ("PIL",) if suffix == ".gif" else ("PIL", "imageio", "imageio_ffmpeg"):
            importlib.import_module(name)
    except ImportError as exc:
        raise RuntimeError(f"writing a trace needs {exc.name}: pip install sunfish[trace]") from exc
    canvas = _Canvas(frames, width, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        (_save_gif if suffix == ".gif" else _save_mp4)(canvas, frames, tmp, fps)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@lru_cache(maxsize=8)
def _find_font(size: int) -> Any:
    """DejaVu Sans Mono (it has Cyrillic) from the system or matplotlib, else Pillow's default."""
    from PIL import ImageFont

    names = ["DejaVuSansMono.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
             "/usr/share/fonts/dejavu/DejaVuSansMono.ttf"]  # a bare name searches system font dirs
    try:
        import matplotlib

        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        names += [str(ttf / "DejaVuSansMono.ttf"), str(ttf / "DejaVuSans.ttf")]
    except ImportError:
        pass
    for name in names:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _clean(piece: str) -> str:
    return piece.replace("\r", "").replace("\t", "    ")


def _wrap(pieces: Sequence[str], cols: int) -> tuple[list[list[tuple[int, int, str]]], int]:
    """Greedy word wrap into ``cols`` character cells; '\\n' breaks lines.

    Returns per position its (row, col, text) line segments, and the row count.
    """
    def boundary(i: int) -> bool:  # does a word start at position i?
        return pieces[i][:1].isspace() or pieces[i - 1][-1:].isspace()

    cells, row, col, soft = [], 0, 0, False
    for i, piece in enumerate(pieces):
        if i and boundary(i):
            j = next((j for j in range(i + 1, len(pieces)) if boundary(j)), len(pieces))
            if col and col + len("".join(pieces[i:j]).split("\n")[0]) > cols:
                row, col, soft = row + 1, 0, True
        segs: list[list[Any]] = []
        for ch in piece:
            if ch == "\n":
                row, col, soft = row + 1, 0, False
                continue
            if soft and col == 0 and ch == " ":
                continue  # no leading space after a soft wrap
            if col >= cols:
                row, col = row + 1, 0
            soft = False
            if segs and segs[-1][0] == row:
                segs[-1][2] += ch
            else:
                segs.append([row, col, ch])
            col += 1
        cells.append([tuple(s) for s in segs])
    return cells, row + 1


class _Canvas:
    """Fixed layout shared by all frames; renders a frame as (H, W) palette indices."""

    def __init__(self, frames: Sequence[Frame], width: int, title: str | None) -> None:
        final = [_clean(p) for p in frames[-1].pieces]
        if any(len(f.pieces) != len(final) or len(f.state) != len(final) for f in frames):
            raise ValueError("all frames of a trace must have the same number of positions")
        size = max(10, round(width / 60))
        self.font, self.title, self.last_step = _find_font(size), title, frames[-1].step
        self.cw = self.font.getlength("M")
        self.text_h = self.font.getbbox("Mgjy|")[3]
        self.lh, self.margin = self.text_h + size // 3, size
        self.pad = (self.lh - self.text_h) // 2  # text's offset in its line
        self.top = self.lh + size  # header line, progress bar, gap
        cols = max(1, int((width - 2 * self.margin) // self.cw))
        self.cells, rows = _wrap(final, cols)
        self.width = width + width % 2
        self.height = self.top + rows * self.lh + self.margin
        self.height += self.height % 2
        self.prompt = np.asarray(frames[0].state) == KNOWN
        self.final = final
        self._paint_layers()
        base = np.array(_BG, float)
        ramps = [base + (np.array(c) - base) * np.arange(16)[:, None] / 15 for c in _COLORS]
        self.palette = np.concatenate(ramps).round().astype(np.uint8)  # (16 * layers, 3)

    def _rect(self, row: int, col: int, n: int) -> tuple[int, int, int, int]:
        x0, y0 = self.margin + round(col * self.cw), self.top + row * self.lh
        return x0, y0, self.margin + round((col + n) * self.cw), y0 + self.lh

    def _paint_layers(self) -> None:
        """Coverage of the final text and of the mask boxes, and which position owns a pixel."""
        self.owner = np.full((self.height, self.width), -1, np.int32)
        self.cov_mask = np.zeros((self.height, self.width), np.uint8)
        texts, pad = [], self.pad
        for p, segs in enumerate(self.cells):
            for row, col, s in segs:
                x0, y0, x1, y1 = self._rect(row, col, len(s))
                texts.append(((x0, y0 + pad), s))
                self.owner[y0:y1, x0:x1] = p
                self.cov_mask[y0 + pad + 1:y1 - pad - 1, x0 + 1:x1 - 1] = 15
        self.cov_text = self._coverage(self.width, self.height, texts)
        self.cov_text[self.owner < 0] = 0

    def _coverage(self, width: int, height: int, texts: list) -> np.ndarray:
        """Anti-aliased coverage (0..15) of ``texts``, a list of ((x, y), text)."""
        from PIL import Image, ImageDraw

        img = Image.new("L", (width, height))
        draw = ImageDraw.Draw(img)
        for xy, text in texts:
            draw.text(xy, text, fill=255, font=self.font)
        return np.asarray(img) >> 4

    def render(self, frame: Frame) -> np.ndarray:
        """Palette indices of one frame: text area from the layers, then the header."""
        state = np.asarray(frame.state)
        layer = np.select([state == MASKED, state == REVEALED, self.prompt], [_MASK, _NEW, _PROMPT], _TEXT)
        layer = np.append(layer, _MASK).astype(np.uint8)  # owner -1 (background) picks the last
        px = layer[self.owner]
        out = px * 16 + np.where(px == _MASK, self.cov_mask, self.cov_text)
        for p in np.flatnonzero(state != MASKED):  # a token that changed since (remasking samplers)
            if _clean(frame.pieces[p]) != self.final[p]:
                self._redraw(out, p, frame.pieces[p], layer[p])
        out[:self.top] = self._header(frame, state)
        return out

    def _redraw(self, out: np.ndarray, p: int, piece: str, layer: int) -> None:
        """Draw ``piece`` into position ``p``'s cells, cut to the room the final text has."""
        chars = _clean(piece).replace("\n", " ")
        for row, col, s in self.cells[p]:
            x0, y0, x1, y1 = self._rect(row, col, len(s))
            cov = self._coverage(x1 - x0, y1 - y0, [((0, self.pad), chars[:len(s)])])
            out[y0:y1, x0:x1] = layer * 16 + cov
            chars = chars[len(s):]

    def _header(self, frame: Frame, state: np.ndarray) -> np.ndarray:
        """Title, 'step k / N' and a progress bar of the revealed fraction."""
        m = self.margin
        label = f"step {frame.step} / {self.last_step}"
        label_x = self.width - m - self.font.getlength(label)
        room = max(0, int((label_x - 2 * m) // self.cw))
        texts = [((label_x, m // 2), label), ((m, m // 2), (self.title or "")[:room])]
        out = _HEADER * 16 + self._coverage(self.width, self.top, texts)
        todo = ~self.prompt
        done = (todo & (state != MASKED)).sum() / max(1, todo.sum())
        y = m // 2 + self.lh
        out[y:y + 2, m:self.width - m] = _MASK * 16 + 15
        out[y:y + 2, m:m + round(done * (self.width - 2 * m))] = _NEW * 16 + 15
        return out


def _save_gif(canvas: _Canvas, frames: Sequence[Frame], tmp: str, fps: float) -> None:
    """Animated GIF that loops forever and holds the last frame."""
    from PIL import Image

    palette = canvas.palette.tobytes()
    images = []
    for frame in frames:
        img = Image.frombytes("P", (canvas.width, canvas.height), canvas.render(frame).tobytes())
        img.putpalette(palette)
        images.append(img)
    durations = [round(1000 / fps)] * len(images)
    durations[-1] += round(1000 * HOLD_SECONDS)
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=durations, loop=0, optimize=False)


def _save_mp4(canvas: _Canvas, frames: Sequence[Frame], tmp: str, fps: float) -> None:
    """H.264 / yuv420p MP4; the last frame is repeated for HOLD_SECONDS."""
    import imageio.v2 as imageio

    with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                            pixelformat="yuv420p", quality=8, macro_block_size=2,
                            ffmpeg_log_level="error") as writer:
        for frame in frames:
            rgb = canvas.palette[canvas.render(frame)]
            writer.append_data(rgb)
        for _ in range(round(HOLD_SECONDS * fps)):
            writer.append_data(rgb)
