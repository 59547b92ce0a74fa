"""`sunfish export --format hf|llada`: the folders compute Sunfish's own logits in transformers (5.x here, 4.46 in the
oracle environment) and in LLaDA's reference code, a LLaDA export opens in Sunfish again, and models outside
LLaDA's architecture are refused in one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from sunfish.cli import main
from sunfish.config import ModelConfig, ProcessConfig, RunConfig, save_config
from sunfish.loading import load_model
from sunfish.model.transformer import build_model, ff_width, kv_heads
from sunfish.tokenizer import train_char_tokenizer

from conftest import TINY_DOCS, cli_error
from oracle import run_oracle

SRC = Path(__file__).resolve().parents[1] / "src"
TEXTS = ["the cat sat on the mat.", "Маша нашла мяч."]
# LLaDA-shaped models: multi-head, grouped-query attention with q/k/v biases, tied embeddings without norm gains
LLADA_SHAPED = {
    "mha": dict(norm_eps=1e-5, rope_base=500000.0),
    "gqa_bias": dict(n_kv_heads=2, qkv_bias=True),
    "tied": dict(tie_embeddings=True, norm_weights=False, n_kv_heads=1, d_ff=48),
}
# what only the hf format carries: time conditioning (adaLN), squared-ReLU MLP, QK-norm, embedding norm, shifted
# layout; and an autoregressive model (causal attention)
BEYOND_LLADA = {
    "beyond": dict(time_cond="adaln", mlp="relu2", qk_norm=True, embed_norm=True, layout="shifted"),
    "ar": dict(attention="causal", process=dict(kind="ar")),
}


def write_checkpoint(folder: Path, tokenizer, seed: int = 0, process: dict | None = None, **model) -> Path:
    """A Sunfish checkpoint folder of a tiny model (masked diffusion unless `process` says otherwise) with random
    weights (gains and biases too)."""
    cfg = RunConfig(model=ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4, context=64,
                                      **model), process=ProcessConfig(**(process or {})))
    torch.manual_seed(seed)
    net = build_model(cfg.model)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    folder.mkdir(parents=True)
    save_model(net, str(folder / "model.safetensors"))
    save_config(cfg, folder / "config.json")
    tokenizer.save(folder / "tokenizer.json")
    (folder / "state.json").write_text(json.dumps({"step": 3, "data_fingerprint": ""}), encoding="utf-8")
    return folder


def batch(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Two texts right-padded to one length: ids (2, L) and attention mask (2, L)."""
    rows = [tokenizer.encode(t) for t in TEXTS]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_id] * (width - len(r)) for r in rows])
    return ids, torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])


def sunfish_logits(folder: Path, ids: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return load_model(folder).model(ids, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Checkpoints of every case, exported through the CLI in each format they fit."""
    root = tmp_path_factory.mktemp("export")
    tokenizer = train_char_tokenizer(TINY_DOCS)
    cases = {**LLADA_SHAPED, **BEYOND_LLADA}
    for i, (name, model) in enumerate(cases.items()):
        ckpt = write_checkpoint(root / name / "ckpt", tokenizer, seed=i, **model)
        for fmt in ("hf", "llada") if name in LLADA_SHAPED else ("hf",):
            assert main(["export", str(ckpt), "--out", str(root / name / fmt), "--format", fmt]) == 0
    ids, mask = batch(tokenizer)
    return {"root": root, "tokenizer": tokenizer, "ids": ids, "mask": mask}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", [*LLADA_SHAPED, *BEYOND_LLADA])
def test_hf_export_loads_with_automodel_and_gives_sunfish_logits(world, name):
    import sunfish.hf  # noqa: F401  (registers model_type "sunfish")
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    folder, ids = world["root"] / name, world["ids"]
    t = torch.tensor([0.3, 0.8])  # used by the time-conditioned model only
    kw = {"t": t} if "time_cond" in BEYOND_LLADA.get(name, {}) else {}
    ours = sunfish_logits(folder / "ckpt", ids, **kw)
    model = AutoModel.from_pretrained(str(folder / "hf")).eval()
    with torch.no_grad():
        assert max_diff(model(ids, **kw).logits, ours) < 1e-5
        masked_lm = AutoModelForMaskedLM.from_pretrained(str(folder / "hf")).eval()
        assert max_diff(masked_lm(input_ids=ids, **kw).logits, ours) < 1e-5
    assert (model.model.lm_head.weight is model.model.embed.weight) == (name == "tied")
    tok = AutoTokenizer.from_pretrained(str(folder / "hf"))
    assert tok(TEXTS[0], add_special_tokens=False)["input_ids"] == world["tokenizer"].encode(TEXTS[0])
    assert tok.mask_token_id == model.config.mask_token_id == world["tokenizer"].mask_id


@pytest.mark.parametrize("name", ["gqa_bias", "ar"])
def test_hf_attention_mask_hides_padding_and_keeps_the_attention_kind(world, name):
    """A right-padded row with its attention mask gives the logits of the row alone; with the mask, a later token
    still reaches an earlier position in the bidirectional model and never in the causal one."""
    import sunfish.hf  # noqa: F401
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(world["root"] / name / "hf")).eval()
    ids, mask = world["ids"], world["mask"]
    short = int(mask[1].sum())
    assert short < ids.shape[1] and bool(mask[0].all())  # the second text is padded, the first is not
    later = ids.clone()
    later[0, 5] = (later[0, 5] + 1) % model.config.vocab_size
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
        alone = model(ids[1:, :short]).logits[0]
        changed = model(later, attention_mask=mask).logits
    assert max_diff(padded[1, :short], alone) < 1e-5 and bool(padded.isfinite().all())
    assert (max_diff(padded[0, 2], changed[0, 2]) > 1e-4) == (name != "ar")


def test_llada_export_runs_in_llada_reference_code_and_hf_export_in_transformers_4(world):
    """LLaDA's own LLaDAModelLM (transformers 4.46) on the llada folders, sunfish.hf on the hf folders."""
    names = list(LLADA_SHAPED)
    code = """
import sys
sys.path.insert(0, src)
from llada import LLaDAModelLM
import sunfish.hf
from transformers import AutoModel
result = {}
with torch.no_grad():
    for name in names:
        llada = LLaDAModelLM.from_pretrained(f"{root}/{name}/llada").eval()
        hf = AutoModel.from_pretrained(f"{root}/{name}/hf").eval()
        result[name] = (llada(ids).logits, hf(ids).logits)
"""
    out = run_oracle(code, src=str(SRC), root=str(world["root"]), names=names, ids=world["ids"])
    for name in names:
        ours = sunfish_logits(world["root"] / name / "ckpt", world["ids"])
        llada, hf = out[name]
        assert llada.shape == ours.shape and max_diff(llada, ours) < 1e-5, name
        assert max_diff(hf, ours) < 1e-5, name


@pytest.mark.parametrize("name", list(LLADA_SHAPED))
def test_llada_export_opens_in_sunfish_again(world, name):
    folder, ids = world["root"] / name, world["ids"]
    config = json.loads((folder / "llada" / "config.json").read_text())
    assert config["model_type"] == "llada" and config["block_type"] == "llama"
    back = load_model(folder / "llada")
    source = load_model(folder / "ckpt").cfg.model
    for key in ("d_model", "n_layers", "n_heads", "qkv_bias", "tie_embeddings", "vocab_size", "rope_base", "context"):
        assert getattr(back.cfg.model, key) == getattr(source, key), key
    assert kv_heads(back.cfg.model) == kv_heads(source) and ff_width(back.cfg.model) == ff_width(source)
    assert back.tokenizer.mask_id == world["tokenizer"].mask_id
    assert back.tokenizer.encode(TEXTS[1]) == world["tokenizer"].encode(TEXTS[1])
    with torch.no_grad():
        assert max_diff(back.model(ids), sunfish_logits(folder / "ckpt", ids)) < 1e-5
    assert json.loads((folder / "llada" / "export.json").read_text())["step"] == 3


@pytest.mark.parametrize("model, feature", [(dict(time_cond="adaln"), "time conditioning"),
                                            (dict(mlp="relu2"), "squared-ReLU MLP"),
                                            (dict(layout="shifted"), "shifted output layout")])
def test_llada_refuses_what_its_architecture_lacks(world, tmp_path, capsys, model, feature):
    ckpt = write_checkpoint(tmp_path / "ckpt", world["tokenizer"], **model)
    err = cli_error(capsys, ["export", str(ckpt), "--out", str(tmp_path / "out"), "--format", "llada"])
    assert feature in err and "--format hf" in err and err.count(". ") == 0
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_export_replaces_an_earlier_export_but_not_another_folder(world, tmp_path, capsys):
    ckpt = world["root"] / "mha" / "ckpt"
    out = tmp_path / "out"
    for fmt in ("llada", "hf", "sunfish", "llada"):  # each format may overwrite an earlier export of any format
        assert main(["export", str(ckpt), "--out", str(out), "--format", fmt]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llada"
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert "not an earlier export" in cli_error(capsys, ["export", str(ckpt), "--out", str(other), "--format", "hf"])
    assert (other / "notes.txt").read_text() == "keep me"
