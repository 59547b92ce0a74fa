"""The Python API: the README's example runs as written, and the API refuses what the CLI refuses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Run the README example in a fresh folder; return its namespace."""
    import os

    folder = tmp_path_factory.mktemp("api")
    here = os.getcwd()
    os.chdir(folder)
    try:
        namespace: dict = {}
        exec(compile(readme_example(), "README.md", "exec"), namespace)
    finally:
        os.chdir(here)
    namespace["folder"] = folder
    return namespace


def test_the_readme_example_runs(demo):
    out, fast, batch, filled, score = (demo[k] for k in ("out", "fast", "batch", "filled", "score"))
    assert out.text.startswith("Once upon a time") and str(out) == out.text
    assert out.steps > 0 and out.nfe >= out.steps and 0 < len(out.ids) <= 32
    assert fast.text.startswith("Once upon a time") and len(batch) == 2 and batch[1].text.startswith("One day")
    assert len(filled.fills) == 1 and filled.text.startswith("Once upon a ") and filled.steps == 4
    assert score.perplexity > 1 and score.tokens > 0
    assert (demo["folder"] / "runs" / "api-demo" / "checkpoints").is_dir()


def test_generate_equals_the_cli_and_refuses_what_does_nothing(demo, capsys):
    import json

    from sunfish.cli import main
    from sunfish.config import ConfigError

    model, run = demo["model"], str(demo["folder"] / "runs" / "api-demo")
    api = model.generate("One day", max_new_tokens=12, steps=6, temperature=0.7, seed=5)
    capsys.readouterr()
    assert main(["sample", run, "--prompt", "One day", "--length", "12", "--steps", "6", "--temperature", "0.7",
                 "--seed", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == api.text
    with pytest.raises(ConfigError, match="sampler.solver does nothing for masked diffusion models"):
        model.generate("One day", solver="heun")
    with pytest.raises(ConfigError, match="unknown config key 'sampler.temprature'"):
        model.generate("One day", temprature=0.5)
    with pytest.raises(ConfigError, match="infill fills the spans"):
        model.infill("a [MASK] b", length=4)
