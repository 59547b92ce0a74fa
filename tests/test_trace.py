"""Tests for sunfish.sample.trace (TraceRecorder and write_trace)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sunfish.sample.trace import (
    HOLD_SECONDS, KNOWN, MASKED, REVEALED, Frame, TraceRecorder, _find_font, write_trace,
)

PIECES = ["При", "вет", ",", " мир", "!", "\n", "Hello", " wor", "ld", " ёж", "\t", "."]
PROMPT = 3  # positions 0..2 are the prompt
REVEAL = [[3, 7], [4, 5, 11], [6, 9], [8, 10]]  # generated positions committed at steps 1..4
MASK_ID = 99


def _run(recorder: TraceRecorder, batch_row: int = 1) -> torch.Tensor:
    """Drive ``recorder`` like the sampler does, on row ``batch_row`` of a batch of 2."""
    final = torch.arange(len(PIECES)).repeat(2, 1)
    final[1 - batch_row] = 50  # the other row must be ignored
    masked = torch.ones_like(final, dtype=torch.bool)
    masked[:, :PROMPT] = False
    recorder.start(torch.where(masked, MASK_ID, final), masked)
    for step, positions in enumerate(REVEAL, 1):
        revealed = torch.zeros_like(masked)
        revealed[:, positions] = True
        masked = masked & ~revealed
        info = SimpleNamespace(step=step, tokens=torch.where(masked, MASK_ID, final),
                               masked=masked, revealed=revealed)
        recorder(info)
    return final


def _token_text(calls: list[int]):
    def text(i: int) -> str:
        calls.append(i)
        return PIECES[i] if i < len(PIECES) else "?"
    return text


@pytest.fixture
def frames() -> list[Frame]:
    recorder = TraceRecorder(_token_text([]), row=1)
    _run(recorder)
    return recorder.frames


def test_recorder_frames():
    calls: list[int] = []
    recorder = TraceRecorder(_token_text(calls), row=1, mask_symbol="#")
    _run(recorder)
    frames = recorder.frames
    assert [f.step for f in frames] == [0, 1, 2, 3, 4]
    first = frames[0]
    assert first.state == (KNOWN,) * PROMPT + (MASKED,) * (len(PIECES) - PROMPT)
    assert first.pieces == tuple(PIECES[:PROMPT]) + ("#",) * (len(PIECES) - PROMPT)
    done = set(range(PROMPT))
    for frame, positions in zip(frames[1:], REVEAL):
        for p in range(len(PIECES)):
            expected = REVEALED if p in positions else KNOWN if p in done else MASKED
            assert frame.state[p] == expected, (frame.step, p)
            assert frame.pieces[p] == ("#" if expected == MASKED else PIECES[p])
        done |= set(positions)
    assert "".join(frames[-1].pieces) == "".join(PIECES)
    assert sorted(calls) == list(range(len(PIECES)))  # token_text is called once per id
    recorder.start(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
    assert len(recorder.frames) == 1  # start() begins a new trace


def test_recorder_window():
    recorder = TraceRecorder(_token_text([]), row=1, start=2, end=8)
    _run(recorder)
    assert all(len(f.pieces) == 6 and len(f.state) == 6 for f in recorder.frames)
    assert recorder.frames[0].state == (KNOWN,) + (MASKED,) * 5
    assert recorder.frames[-1].pieces == tuple(PIECES[2:8])


def test_font_has_cyrillic():
    font = _find_font(16)
    if Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf").exists():
        assert "DejaVu" in font.path
    assert font.getbbox("ж")[2] > 0


def test_write_gif(frames, tmp_path):
    from PIL import Image

    out = write_trace(frames, tmp_path / "trace.gif", fps=10, width=400, title="Пример")
    assert out == tmp_path / "trace.gif"
    assert os.listdir(tmp_path) == ["trace.gif"]  # no temp file left behind
    with Image.open(out) as im:
        assert im.n_frames == len(frames)
        assert im.info.get("loop") == 0
        sizes, durations, colors = set(), [], []
        for k in range(im.n_frames):
            im.seek(k)
            sizes.add(im.size)
            durations.append(im.info["duration"])
            colors.append({c for _, c in im.convert("RGB").getcolors(1 << 16)})
    assert len(sizes) == 1 and next(iter(sizes))[0] == 400
    assert durations[0] == 100 and durations[-1] == 100 + 1000 * HOLD_SECONDS
    highlight = (255, 184, 48)
    assert highlight not in colors[0] and all(highlight in c for c in colors[1:])


def test_write_mp4(frames, tmp_path):
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        pytest.skip("imageio-ffmpeg is not installed")
    import imageio.v2 as imageio

    out = write_trace(frames, tmp_path / "trace.mp4", fps=8, width=321)
    assert out.stat().st_size > 0
    assert os.listdir(tmp_path) == ["trace.mp4"]
    with imageio.get_reader(out, format="FFMPEG") as reader:
        assert reader.count_frames() == len(frames) + round(HOLD_SECONDS * 8)
        height, width = reader.get_data(0).shape[:2]
    assert width == 322 and height % 2 == 0


def test_changed_token_is_redrawn(frames, tmp_path):
    """A token that differs from its final text (remasking samplers) still renders."""
    changed = Frame(3, frames[3].pieces[:6] + ("Бонжур!!",) + frames[3].pieces[7:], frames[3].state)
    write_trace([frames[0], changed, frames[-1]], tmp_path / "t.gif")
    assert os.listdir(tmp_path) == ["t.gif"]


def test_bad_arguments(frames, tmp_path):
    with pytest.raises(ValueError, match=r"cannot write a trace to '.*x\.png': use a \.gif or \.mp4"):
        write_trace(frames, tmp_path / "x.png")
    with pytest.raises(ValueError, match="without frames"):
        write_trace([], tmp_path / "x.gif")
    with pytest.raises(ValueError, match="same number of positions"):
        write_trace([frames[0], Frame(1, ("a",), (KNOWN,))], tmp_path / "x.gif")
    assert os.listdir(tmp_path) == []


def test_missing_dependency(frames, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio", None)  # makes `import imageio` fail
    with pytest.raises(RuntimeError, match=r"pip install sunfish\[trace\]"):
        write_trace(frames, tmp_path / "x.mp4")
    assert os.listdir(tmp_path) == []
