"""`sunfish sft` of what is not a plain Sunfish run: public checkpoints (LLaDA- and Dream-shaped folders, their own
tokenizer and chat template kept) and adapted runs (a causal LM flipped by `sunfish adapt`), full and with LoRA."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")
pytest.importorskip("peft")

import sunfish
from sunfish.checkpoint.files import list_checkpoints, read_config
from sunfish.cli import main
from sunfish.loading import load_model

from public_folders import CHAT_TEMPLATE, write_dream, write_llada
from test_adapt_helpers import make_hf_model, write_docs
from test_sft import write_jsonl

PAIRS = [("hi", "hello"), ("name?", "Sunfish"), ("2+2?", "four")]
FLAGS = ["--optim.lr=0.01", "--optim.warmup_steps=10", "--train.batch_size=8", "--data.val_fraction=0.1",
         "--train.log_every=50", "--no-progress"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft_sources")
    write_jsonl(folder / "chat.jsonl", [{"prompt": p, "response": r} for p, r in PAIRS * 4])
    return folder


def fine_tune(root, base, name, steps, *extra):
    out = root / name
    assert main(["sft", str(base), "--data", str(root / "chat.jsonl"), "--out", str(out), "--steps", str(steps),
                 "--train.seq_len=64", *FLAGS, *extra]) == 0
    return out


def answers(path) -> list[str]:
    model = sunfish.load(path, device="cpu")
    return [model.chat(prompt, max_new_tokens=12, steps=12).text for prompt, _ in PAIRS]


def test_a_public_llada_checkpoint_learns_conversations_in_its_own_template(root):
    out = fine_tune(root, write_llada(root / "llada"), "llada-sft", 300)
    ckpt = list_checkpoints(out)[-1]
    assert (ckpt / "hf_config.json").is_file() and (ckpt / "tokenizer_config.json").is_file()
    loaded = load_model(out)
    assert loaded.hf_config is not None and loaded.tokenizer.chat_template == CHAT_TEMPLATE
    assert loaded.tokenizer.mask_id == load_model(root / "llada").tokenizer.mask_id
    assert read_config(ckpt).sft.added_tokens == 0  # the model's own template: no tokens added
    assert answers(out) == [reply for _, reply in PAIRS]


def test_lora_on_a_public_dream_checkpoint_trains_adapters_only_and_exports_merged(root, capsys):
    base = write_dream(root / "dream")
    out = fine_tune(root, base, "dream-lora", 4, "--lora", "--sft.lora_rank=4")
    weights = load_file(str(list_checkpoints(out)[-1] / "model.safetensors"))
    original = load_model(base).model.state_dict()
    frozen = {k.replace(".base_layer", ""): v for k, v in weights.items() if "lora_" not in k}
    assert set(frozen) == set(original) and all(torch.equal(frozen[k], original[k]) for k in original)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # the adapters moved
    assert main(["export", str(out), "--out", str(root / "dream-export")]) == 0
    merged, exported = load_model(out).model, load_model(root / "dream-export").model
    assert load_model(root / "dream-export").tokenizer.chat_template is not None
    tokens = torch.randint(0, 250, (2, 16))
    with torch.no_grad():
        assert torch.equal(merged(tokens), exported(tokens))
        assert not torch.allclose(merged(tokens), load_model(base).model(tokens))


@pytest.mark.parametrize("kind", ["hf", "sunfish"])
def test_adapted_runs_fine_tune_full_and_with_lora(root, kind, capsys):
    """An adapted run (trained with LoRA, merged before SFT) fine-tunes, resumes, and loads as an adapted model."""
    tiny = ["--train.seq_len=32", "--train.batch_size=4", "--data.val_fraction=0.1", "--no-progress"]
    if kind == "hf":
        causal = make_hf_model(root / "llama", "llama")
    else:
        causal = root / "ar"
        assert main(["train", "--preset", "nano", "--process", "ar", "--out", str(causal), "--steps", "3",
                     "--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--data.bpe_vocab=300",
                     "--data.tokenizer=bpe", "--data.synth_docs=200", *tiny]) == 0
    adapted = root / f"adapted-{kind}"
    assert main(["adapt", str(causal), "--data", str(write_docs(root)), "--out", str(adapted), "--steps", "2",
                 "--lora", "--lora-rank", "4", *tiny]) == 0
    for lora in ([], ["--lora", "--sft.lora_rank=4"]):
        name = f"sft-{kind}-{'lora' if lora else 'full'}"
        out = fine_tune(root, adapted, name, 3, *lora)
        assert main(["sft", str(adapted), "--data", str(root / "chat.jsonl"), "--out", str(out), "--steps", "5",
                     "--resume", "--train.seq_len=64", *FLAGS, *lora]) == 0
        cfg = read_config(list_checkpoints(out)[-1])
        assert cfg.adapt.base and not cfg.adapt.lora and cfg.sft.lora == bool(lora)
        loaded = load_model(out)
        assert type(loaded.model).__name__ == "DiffusionLM" and loaded.step == 5
        assert all("lora_" not in k for k in loaded.model.state_dict())  # merged on load
        assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l][-1] == 5
        model = sunfish.load(out, device="cpu")
        assert isinstance(model.chat("hi", max_new_tokens=4, steps=4).text, str)
