"""Public model folders (LLaDA, Dream layouts) load into Sunfish's own model and run every verb: the model's
tokenizer with the config's special ids, `sunfish convert`, inference dtypes, chat templates, and the
grouped-query / bias / shifted-layout features they brought into Sunfish's Transformer."""

from __future__ import annotations

import json

import pytest
import torch

from sunfish.api import load
from sunfish.cli import main
from sunfish.config import CacheMode, Layout, ModelConfig, SamplerConfig
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.unmask import _Predictor

from conftest import cli_error, make_model
from public_folders import EOS, EOT, MASK, write_dream, write_llada


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("public")
    return {"llada": write_llada(root / "llada"), "dream": write_dream(root / "dream"),
            "llada_tied_gqa": write_llada(root / "tied", kv=2, tied=True, seed=3)}


def _logits(model, ids):
    with torch.no_grad():
        return model.model(torch.tensor([ids]))


def test_folders_load_with_the_configs_ids_and_architecture(folders):
    llada, dream = load(folders["llada"], device="cpu"), load(folders["dream"], device="cpu")
    assert llada.spec.name == dream.spec.name == "masked" and llada.tokenizer.mask_id == MASK
    assert llada.tokenizer.eos_id == EOS and llada.cfg.model.layout is Layout.SAME
    assert dream.cfg.model.layout is Layout.SHIFTED and dream.cfg.model.n_kv_heads == 2 and dream.cfg.model.qkv_bias
    assert dream.model.blocks[0].attn.qkv.bias.shape == (64 + 2 * 2 * 16,)
    assert dream.cfg.sampler.rule.value == "ancestral_topk" and llada.cfg.sampler.block_length == 32
    tied = load(folders["llada_tied_gqa"], device="cpu")
    assert tied.model.lm_head.weight is tied.model.embed.weight and tied.cfg.model.n_kv_heads == 2
    assert torch.isfinite(_logits(tied, [1, 5, 6, MASK, MASK])).all()


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_every_sampling_verb_runs_on_a_public_folder(folders, name, capsys, tmp_path):
    run = str(folders[name])
    capsys.readouterr()
    assert main(["sample", run, "--prompt", "hello", "--length", "12", "--steps", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"].startswith("hello")
    assert main(["sample", run, "--prompt", "hi", "--length", "16", "--block-length", "8", "--rule", "threshold",
                 "--threshold", "0.5", "--cache", "dual"]) == 0
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nmuch longer prompt\n")
    assert main(["sample", run, "--prompts", str(prompts), "--length", "8", "--steps", "8", "--json"]) == 0
    assert main(["infill", run, "--text", "one [MASK:3] two", "--steps", "3"]) == 0


def test_convert_writes_a_sunfish_checkpoint_with_the_same_outputs(folders, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(folders["dream"]), "--out", str(out)]) == 0
    assert (out / "hf_config.json").is_file() and (out / "manifest.json").is_file()
    a, b = load(folders["dream"], device="cpu"), load(out, device="cpu")
    assert b.tokenizer.mask_id == MASK and b.cfg.model == a.cfg.model
    ids = [1, 40, 41, MASK, MASK, 42]
    assert torch.equal(_logits(a, ids), _logits(b, ids))
    argv = ["--prompt", "hi", "--length", "8", "--steps", "8", "--json"]
    capsys.readouterr()
    assert main(["sample", str(folders["dream"]), *argv]) == 0
    first = json.loads(capsys.readouterr().out)["text"]
    assert main(["sample", str(out), *argv]) == 0 and json.loads(capsys.readouterr().out)["text"] == first
    assert "already" in cli_error(capsys, ["convert", str(out), "--out", str(tmp_path / "again")])


def test_inference_dtypes(folders):
    fp32, bf16 = load(folders["llada"], device="cpu"), load(folders["llada"], device="cpu", dtype="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    ids = [1, 40, 41, MASK, MASK, 42]
    assert torch.allclose(_logits(bf16, ids).float(), _logits(fp32, ids), atol=0.05)
    assert bf16.generate("hi", max_new_tokens=8, steps=8).steps == 8


def test_chat_uses_the_template_and_stops_at_its_end_of_turn(folders, capsys):
    from sunfish.sample.chat import as_messages, end_of_turn_id, render_chat

    model = load(folders["llada"], device="cpu")
    assert end_of_turn_id(model.tokenizer) == EOT
    assert render_chat(model.tokenizer, as_messages("hi", "be brief")) == "<bos>system: be brief<eot><bos>user: hi<eot><bos>assistant: "
    reply = model.chat("hi", max_new_tokens=12, steps=12)
    assert EOT not in reply.ids and EOS not in reply.ids and not reply.text.startswith("<bos>")
    capsys.readouterr()
    assert main(["sample", str(folders["llada"]), "--chat", "--prompt", "hi", "--length", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == model.chat("hi", max_new_tokens=8).text
    assert "--system goes with --chat" in cli_error(capsys, ["sample", str(folders["llada"]), "--system", "x"])


def test_a_model_without_a_chat_template_chats_through_the_plain_default(capsys, tmp_path):
    from test_cli import TINY
    from test_train import DOCS

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join([*DOCS, "System: Be kind.\nUser: hi\nAssistant: hello"]))
    assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(tmp_path / "r"), "--steps", "2", *TINY]) == 0
    from sunfish.sample.chat import chat_format

    model = load(tmp_path / "r", device="cpu")
    form = chat_format(model.tokenizer, [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi "}])
    assert form.prompt == "System: Be kind.\n\nUser: hi\n\nAssistant: " and form.stops == ("\n\nUser:",)
    assert form.ids == [model.tokenizer.bos_id, *model.tokenizer.encode(form.prompt)] and form.end_id is None
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "r"), "--chat", "--prompt", "hi", "--length", "8"]) == 0
    assert "Assistant" not in capsys.readouterr().out
    assert "unknown chat role 'robot'" in str(pytest.raises(ValueError, chat_format, model.tokenizer,
                                                            [{"role": "robot", "content": "x"}]).value)


def test_a_shifted_model_predicts_a_cached_span_as_the_full_pass_does():
    """A span forward starts one position early for a shifted model; on a fresh cache it equals the full pass."""
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, qkv_bias=True, context=64,
                      layout="shifted")
    model = make_model(cfg)
    x = torch.randint(0, 31, (2, 24), generator=torch.Generator().manual_seed(0))
    for mode in (CacheMode.PREFIX, CacheMode.DUAL):
        predict = _Predictor(model, 31, MaskSchedule("linear"), mode, False)
        full = predict(x, 8, 16)  # fills the cache
        assert torch.allclose(predict(x, 8, 16), full, atol=1e-5)  # the cached span, one position wider


def test_grouped_query_biased_shifted_models_train_and_sample(tmp_path, capsys):
    from test_cli import TINY
    from test_train import DOCS

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(DOCS))
    out = tmp_path / "run"
    assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(out), "--steps", "3", *TINY,
                 "--model.n_heads=4", "--model.n_kv_heads=2", "--model.qkv_bias=true", "--model.layout=shifted",
                 "--model.norm_eps=1e-6"]) == 0
    assert main(["sample", str(out), "--length", "12", "--block-length", "4", "--cache", "dual", "--steps", "12"]) == 0
    err = cli_error(capsys, ["train", "--preset", "nano", "--out", str(tmp_path / "x"), "--process", "ar",
                             "--model.layout=shifted", *TINY])
    assert "model.layout=same" in err


def test_quantized_weights_through_the_command_line(folders, capsys):
    pytest.importorskip("torchao")
    run = str(folders["llada"])
    capsys.readouterr()
    argv = ["sample", run, "--prompt", "hello", "--length", "8", "--steps", "8", "--json"]
    assert main([*argv, "--quantize", "int8"]) == 0
    assert json.loads(capsys.readouterr().out)["text"].startswith("hello")
    assert "int4" in cli_error(capsys, [*argv, "--quantize", "int4"])  # CUDA only
    assert main([*argv, "--dtype", "bf16"]) == 0
    assert json.loads(capsys.readouterr().out)["text"].startswith("hello")
    assert "invalid choice" in cli_error(capsys, [*argv, "--dtype", "fp8"])
    model = load(folders["llada"], device="cpu", quantize="int8")
    from sunfish.quantize import weight_bytes

    assert weight_bytes(model.model) < 0.6 * weight_bytes(load(folders["llada"], device="cpu").model)


def test_dreams_own_tokenizer_class_is_read_without_its_code_and_gives_its_ids(tmp_path):
    """Released Dream folders name DreamTokenizer (their own code) and ship vocab.json + merges.txt: Sunfish reads
    them with transformers' Qwen2Tokenizer, never asking to run the folder's code, and gets Dream's own ids."""
    from oracle import run_oracle
    from public_folders import write_dream_tokenizer
    from sunfish.families.open import _hf_tokenizer

    write_dream_tokenizer(tmp_path)
    text = "the heat in a tin, Привет 123 <|im_end|> ok\n\tthe"
    ours = _hf_tokenizer(tmp_path)
    theirs = run_oracle("from dream.tokenization_dream import DreamTokenizer\n"
                        "t = DreamTokenizer.from_pretrained(folder)\n"
                        "result = {'ids': t.encode(text, add_special_tokens=False), 'mask': t.mask_token_id}",
                        folder=str(tmp_path), text=text)
    assert ours.encode(text, add_special_tokens=False) == theirs["ids"] and ours.mask_token_id == theirs["mask"]
