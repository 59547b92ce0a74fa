"""`sunfish adapt` end to end on tiny random causal LMs: train, resume, sample, export, Sunfish AR bases, errors."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from sunfish.cli import main

from conftest import cli_error

from test_adapt_helpers import CHAT_TEMPLATE, make_hf_model, write_docs

TINY = ["--train.seq_len=32", "--train.batch_size=4", "--train.val_every=6", "--train.val_batches=2",
        "--train.log_every=3", "--optim.warmup_steps=2", "--optim.lr=3e-3", "--data.val_fraction=0.1", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt_cli")
    base = make_hf_model(root / "gpt2", "gpt2")
    return {"root": root, "base": base, "docs": write_docs(root)}


@pytest.fixture(scope="module")
def lora_run(world):
    out = world["root"] / "lora_run"
    argv = ["adapt", str(world["base"]), "--data", str(world["docs"]), "--out", str(out), "--steps", "6", "--lora",
            "--lora-rank", "4", "--adapt.align_weight=0.5", "--adapt.align_layer_sample=1", *TINY]
    assert main(argv) == 0
    return out


def metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_adapt_lora_run_resumes_samples_and_exports(world, lora_run, capsys):
    assert (lora_run / "hf_base" / "config.json").is_file() and metrics(lora_run)[-1]["step"] == 6
    argv = ["adapt", str(world["base"]), "--data", str(world["docs"]), "--out", str(lora_run), "--resume", "--steps", "9", *TINY]
    assert main(argv) == 0
    assert [m["step"] for m in metrics(lora_run)] == [3, 6, 9]
    capsys.readouterr()
    assert main(["sample", str(lora_run), "--prompt", "Once upon a time", "--length", "12", "--steps", "6", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["text"].startswith("Once upon a time") and body["nfe"] == 6
    assert main(["infill", str(lora_run), "--text", "Once upon [MASK:4] time", "--steps", "4"]) == 0
    err = cli_error(capsys, ["sample", str(lora_run), "--cache", "dual", "--block-length", "4"])
    assert "sampler.cache is not available for this model" in err  # the loader says what the network cannot do

    export = world["root"] / "export"
    assert main(["adapt", "export", str(lora_run), "--out", str(export)]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sunfish.loading import load_model

    hf = AutoModelForCausalLM.from_pretrained(str(export)).eval()
    tok = AutoTokenizer.from_pretrained(str(export))
    assert tok.mask_token_id is not None and tok.chat_template == CHAT_TEMPLATE
    assert hf.config.sunfish_adapt["layout"] == "shifted" and not any("lora" in n for n, _ in hf.named_parameters())
    ours = load_model(lora_run, torch.device("cpu")).model
    x = torch.tensor([tok.encode("Once upon a time there was a cat")])
    with torch.no_grad():
        theirs = hf(x, attention_mask=torch.ones(1, 1, x.shape[1], x.shape[1], dtype=torch.bool)).logits
        mine = ours(x)
    assert torch.allclose(theirs[:, :-1], mine[:, 1:], atol=1e-4)  # merged LoRA, shifted layout
    assert main(["adapt", "export", str(lora_run), "--out", str(export)]) == 2  # never writes into a full folder


def test_short_adaptation_lowers_the_masked_loss(world):
    from sunfish.adapt.model import build_student
    from sunfish.adapt.run import adapt_corpus, base_tokenizer
    from sunfish.process.masked import masked_diffusion_loss
    from sunfish.loading import load_model

    out = world["root"] / "full_run"
    argv = ["adapt", str(world["base"]), "--data", str(world["docs"]), "--out", str(out), "--steps", "30",
            "--layout", "same", *TINY]
    assert main(argv) == 0
    loaded = load_model(out, torch.device("cpu"))
    cfg = loaded.cfg
    before = build_student(cfg, out, pretrained=True).eval()
    held_out = adapt_corpus(cfg, [str(world["docs"])], base_tokenizer(cfg)).val.windows(32)[:8]

    def nelbo(model):
        with torch.no_grad():
            return float(masked_diffusion_loss(model, held_out, cfg.process, loaded.tokenizer.mask_id,
                                               torch.Generator().manual_seed(0)).loss)

    assert nelbo(loaded.model) < nelbo(before) - 0.5


def test_adapt_a_sunfish_causal_run(world, capsys):
    ar = world["root"] / "ar_run"
    tiny = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=64", "--train.batch_size=4",
            "--train.val_every=0", "--data.val_fraction=0.1", "--no-progress"]
    assert main(["train", "--objective", "ar", "--preset", "nano", "--data", str(world["docs"]), "--out", str(ar),
                 "--steps", "3", *tiny]) == 0
    out = world["root"] / "from_ar"
    assert main(["adapt", str(ar), "--data", str(world["docs"]), "--out", str(out), "--steps", "3",
                 "--adapt.align_weight=1", *TINY]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "Once", "--length", "8", "--steps", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"].startswith("Once")
    export = world["root"] / "from_ar_hf"
    assert main(["adapt", "export", str(out), "--out", str(export)]) == 0
    from transformers import AutoModelForCausalLM

    from sunfish.loading import load_model

    hf = AutoModelForCausalLM.from_pretrained(str(export)).eval()
    loaded = load_model(out, torch.device("cpu"))
    x = torch.randint(4, loaded.tokenizer.vocab_size, (1, 12))
    with torch.no_grad():
        theirs = hf(x, attention_mask=torch.ones(1, 1, 12, 12, dtype=torch.bool)).logits
        mine = loaded.model(x)
    assert torch.allclose(theirs[:, :-1], mine[:, 1:], atol=1e-4)
    assert main(["adapt", str(out), "--data", str(world["docs"]), "--out", str(world["root"] / "x"), *TINY]) == 2




def test_bad_input_gets_one_sentence(world, tmp_path, capsys):
    docs = str(world["docs"])
    assert "does not exist" in cli_error(capsys, ["adapt", str(tmp_path / "nope"), "--data", docs, "--out", str(tmp_path / "r")])
    (tmp_path / "empty").mkdir()
    assert "neither a Hugging Face" in cli_error(capsys, ["adapt", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert "needs --out" in cli_error(capsys, ["adapt", str(world["base"]), "--data", docs])
    assert "needs a folder" in cli_error(capsys, ["adapt", "export", "--out", str(tmp_path / "e")])
    if not torch.cuda.is_available():
        err = cli_error(capsys, ["adapt", str(world["base"]), "--data", docs, "--out", str(tmp_path / "q"), "--lora", "--qlora", *TINY])
        assert "CUDA" in err and "bitsandbytes" in err
    assert "--adapt.align_layers" in cli_error(capsys, ["adapt", str(world["base"]), "--data", docs, "--out",
                                                       str(tmp_path / "l"), "--adapt.align_weight=1",
                                                       "--adapt.align_layers=7", *TINY])
    assert "unknown config key" in cli_error(capsys, ["adapt", str(world["base"]), "--out", str(tmp_path / "k"), "--adapt.nope=1"])
