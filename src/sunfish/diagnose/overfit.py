"""The doctor's end-to-end check: overfit a tiny masked diffusion model on one repeated sentence.

It goes through everything a real run uses (the corpus reader, the character tokenizer, the training loop with
its checkpoint, the loader and the sampler) in a temporary folder. A working install drives the validation
loss from about ln |V| (a uniform guess over the ~12 characters: 2.6 nats) to below `LOSS_BOUND`, and greedy
decoding after the prompt "hello" gives back " world." (masked diffusion, Sahoo et al. 2024, arXiv:2406.07524;
the sampler reveals one position per step, most confident first). Measured on a shared 2-core CPU: 200 steps
take about 15 s and end near 0.3 nats for seeds 0-2; a model that has not converged by then is given a second
round of 200 steps before the check fails (a slower or differently rounding machine may need it).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from sunfish.diagnose.checks import Check, Status

SENTENCE = "hello world."
PROMPT = "hello"
LOSS_BOUND = 0.6  # nats per masked token on the fixed validation batches
ROUNDS = (200, 400)  # training steps after which the check is made (the second round resumes the first)
# A 2-layer, 64-wide model on 16-character windows: the windows are random cuts of the repeated sentence.
SETTINGS = {"model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "context": 16},
            "train": {"batch_size": 64, "log_every": 50, "val_batches": 2, "seed": 0},
            "optim": {"lr": 1e-2, "warmup_steps": 10}, "data": {"val_fraction": 0.05}}


def overfit(device: str = "auto") -> Check:
    """Train, sample and judge (see the module docstring); any error is a FAIL with its first line."""
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="sunfish-doctor-") as tmp:
            loss, text, steps = _train_and_sample(Path(tmp), device)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        return Check("overfit", Status.FAIL, f"the tiny training run failed: {type(err).__name__}: {first}",
                     "run it again with SUNFISH_DEBUG=1 for the traceback, and report it with this output")
    seconds = time.perf_counter() - start
    detail = f"validation loss {loss:.2f} after {steps} steps, sample {text!r} ({seconds:.0f} s)"
    if loss < LOSS_BOUND and text == SENTENCE:
        return Check("overfit", Status.OK, f"a tiny masked model learned {SENTENCE!r}: {detail}")
    return Check("overfit", Status.FAIL, f"a tiny masked model did not learn {SENTENCE!r} (wanted a loss below "
                 f"{LOSS_BOUND} and the sentence back): {detail}",
                 "training or sampling is wrong on this install: check the versions above, reinstall torch, report it")


def _train_and_sample(tmp: Path, device: str) -> tuple[float, str, int]:
    """(validation loss, sampled text, steps) after the first round that passes, or after the last round."""
    from sunfish.api import load, train
    from sunfish.config import apply_tree, load_preset

    corpus = tmp / "sentence.txt"
    corpus.write_text("\n\n".join([SENTENCE] * 200), encoding="utf-8")
    cfg = apply_tree(load_preset("nano"), SETTINGS)
    for i, steps in enumerate(ROUNDS):
        cfg = apply_tree(cfg, {"train": {"steps": steps, "val_every": steps, "device": device}})
        result = train(cfg, out=tmp / "run", data=[str(corpus)], resume=i > 0, progress=False, log=lambda s: None)
        model = load(tmp / "run", device=device)
        text = model.generate(PROMPT, max_new_tokens=len(SENTENCE) - len(PROMPT),
                              steps=len(SENTENCE) - len(PROMPT)).text
        if result.final_val_loss < LOSS_BOUND and text == SENTENCE:
            break
    return result.final_val_loss, text, steps
