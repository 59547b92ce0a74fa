"""`sunfish sft --lora`: only the adapters (and the rows of the added chat tokens) train, their size is r (in + out)
per wrapped layer, every loader and `sunfish export` see the merged network with the run's outputs, a resumed run
equals an uninterrupted one, and bad LoRA settings are one sentence."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")

import sunfish
from sunfish.api import Model
from sunfish.checkpoint.files import list_checkpoints, read_config
from sunfish.checkpoint.weights import load_weights
from sunfish.cli import main
from sunfish.loading import load_model
from sunfish.lora import add_sft_adapters
from sunfish.registry import build_network
from sunfish.training.sft import sft

from conftest import cli_error, run_metrics
from serving import SMALL
from test_sft import CONVERSATIONS, write_jsonl

RANK = 4
# process -> extra base flags: block diffusion and a tied-embedding AR model cover the other shapes of the network
KINDS = {"masked": [], "block": ["--process.block_size=4"], "ar": ["--model.tie_embeddings=true"]}
SFT_FLAGS = ["--train.batch_size=4", "--train.seq_len=36", "--train.log_every=1", "--optim.lr=0.01",
             "--optim.warmup_steps=1", "--data.val_fraction=0.2", "--no-progress"]


def train_base(root, process):
    out = root / f"base-{process}"
    assert main(["train", "--preset", "nano", "--process", process, "--out", str(out), "--steps", "3", *SMALL,
                 *KINDS[process]]) == 0
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    data = write_jsonl(root / "chat.jsonl", [{"prompt": p, "response": r} for p, r in CONVERSATIONS * 2])
    return {"root": root, "data": data, "bases": {p: train_base(root, p) for p in KINDS}}


@pytest.fixture(scope="module")
def runs(world):
    """One LoRA SFT run per base (3 steps, rank 4, every linear layer of the blocks) and the lines it logged."""
    out = {}
    for process, base in world["bases"].items():
        lines: list[str] = []
        tree = {"sft": {"lora": "true", "lora_rank": str(RANK), "pad": "mask"},  # (EOS padding: replies are EOS at first) "train": {"steps": "3", "batch_size": "4", "seq_len": "36"},
                "optim": {"lr": "0.01", "warmup_steps": "1"}}
        run = world["root"] / f"sft-{process}"
        sft(base, [str(world["data"])], out=run, tree=tree, progress=False, log=lines.append)
        out[process] = (base, run, lines)
    return out


def wrapped_network(ckpt):
    """The run's network as it trained: adapters in place, not merged."""
    cfg = read_config(ckpt)
    model = build_network(cfg.model, cfg.process)
    add_sft_adapters(model, cfg.sft, cfg.sft.added_tokens)
    load_weights(model, ckpt)
    return model.eval(), cfg


def name_in_run(name: str, saved: dict) -> str:
    """The saved name of a base tensor: a wrapped layer keeps it under base_layer, a row-trained one under
    parametrizations.weight.original."""
    module, _, leaf = name.rpartition(".")
    for candidate in (name, f"{module}.base_layer.{leaf}", f"{module}.parametrizations.{leaf}.original"):
        if candidate in saved:
            return candidate
    raise AssertionError(f"{name} is not in the run's checkpoint")


@pytest.mark.parametrize("process", list(KINDS))
def test_only_the_adapters_train_and_their_size_is_rank_times_in_plus_out(runs, process):
    base, run, lines = runs[process]
    before = load_model(base, "cpu").model.state_dict()
    ckpt = list_checkpoints(run)[-1]
    saved = load_file(str(ckpt / "model.safetensors"))
    vocab = before["embed.weight"].shape[0]
    for name, value in before.items():  # every base tensor is unchanged (added rows: still the mean of the others)
        after = saved[name_in_run(name, saved)]
        assert torch.equal(after[: value.shape[0]], value), name
        if after.shape != value.shape:
            assert torch.allclose(after[vocab:], value.mean(0, keepdim=True).expand(after.shape[0] - vocab, -1))
    wrapped = {k.rsplit(".lora_A", 1)[0] for k in saved if ".lora_A." in k}
    blocks = {k.split(".")[1] for k in before if k.startswith("blocks.")}
    assert len(wrapped) == 4 * len(blocks) and {w.rsplit(".", 1)[-1] for w in wrapped} == {"qkv", "out", "up", "down"}
    count = 0
    for layer in wrapped:
        out_features, in_features = before[f"{layer}.weight"].shape
        assert saved[f"{layer}.lora_A.default.weight"].shape == (RANK, in_features)
        assert saved[f"{layer}.lora_B.default.weight"].shape == (out_features, RANK)
        assert saved[f"{layer}.lora_B.default.weight"].abs().sum() > 0  # B starts at zero: it trained
        count += RANK * (in_features + out_features)
    tied = process == "ar"
    rows = [k for k in saved if k.endswith("parametrizations.weight.0.delta")]
    assert len(rows) == 2 and all(saved[k].shape == (4, before["embed.weight"].shape[1]) for k in rows)
    assert torch.equal(saved[rows[0]], saved[rows[1]]) == tied  # a tied embedding keeps one delta
    count += saved[rows[0]].numel() * (1 if tied else 2)
    assert any(f" {count:,} trainable of " in line for line in lines)


@pytest.mark.parametrize("process", list(KINDS))
def test_every_loader_and_the_export_see_the_merged_network_with_the_runs_outputs(runs, world, process):
    _, run, _ = runs[process]
    wrapped, cfg = wrapped_network(list_checkpoints(run)[-1])
    export = world["root"] / f"export-{process}"
    assert main(["export", str(run), "--out", str(export)]) == 0
    assert not any("lora" in k or "parametrizations" in k for k in load_file(str(export / "model.safetensors")))
    assert not read_config(export).sft.lora and read_config(export).sft.base
    x = torch.randint(0, cfg.model.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = wrapped(x)
        for path in (run, export):
            loaded = load_model(path, "cpu")
            assert loaded.cfg.sft.lora is False and all(p.requires_grad for p in loaded.model.parameters())
            assert (loaded.model.embed.weight is loaded.model.lm_head.weight) == (process == "ar")
            assert torch.allclose(loaded.model(x), expected, atol=1e-5, rtol=0)
    original = sunfish.load(run, device="cpu")
    lora = Model(model=wrapped, tokenizer=original.tokenizer, cfg=cfg, path=original.path, step=original.step)
    merged = [original, sunfish.load(export, device="cpu")]
    settings = {"max_new_tokens": 8, **({"steps": 8} if process != "ar" else {})}
    runs = [("chat", prompt, settings) for prompt, _ in CONVERSATIONS[:2]] + [("generate", "Once upon", settings)]
    made = []
    for verb, text, kwargs in runs:
        out = getattr(lora, verb)(text, **kwargs)
        made.append(out.ids)
        for other in merged:
            again = getattr(other, verb)(text, **kwargs)
            assert (again.text, again.ids) == (out.text, out.ids)
    assert any(made)


def test_a_resumed_lora_run_equals_an_uninterrupted_one(world, capsys):
    base, data = str(world["bases"]["masked"]), str(world["data"])
    full, part = world["root"] / "full", world["root"] / "part"
    argv = ["sft", base, "--data", data, "--lora", "--sft.lora_rank=2", "--sft.lora_targets=qkv,down", "--steps", "6",
            "--save-every", "3", *SFT_FLAGS]
    assert main([*argv, "--out", str(full)]) == 0
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step-000006")
    assert main([*argv, "--out", str(part), "--resume"]) == 0
    assert run_metrics(part) == run_metrics(full) and len(run_metrics(full)) >= 6
    a, b = (load_file(str(list_checkpoints(r)[-1] / "model.safetensors")) for r in (full, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(".qkv.lora_A." in k for k in a) and not any(".out.lora_A." in k for k in a)
    capsys.readouterr()
    words = cli_error(capsys, ["sft", base, "--data", data, "--steps", "8", "--out", str(part), "--resume", *SFT_FLAGS])
    assert "trained with --lora --sft.lora_rank=2" in words


def test_bad_lora_settings_are_one_sentence(world, capsys):
    base, data = str(world["bases"]["masked"]), str(world["data"])

    def error(*flags):
        return cli_error(capsys, ["sft", base, "--data", data, "--out", str(world["root"] / "bad"), "--steps", "1", *flags])

    words = error("--lora", "--sft.lora_targets=q,v")
    assert "names 'q', which is not a layer LoRA can wrap" in words and "down, out, qkv, up" in words
    assert "names 'lm_head'" in error("--lora", "--sft.lora_targets=qkv,lm_head")
    for flag in ("--sft.lora_rank=8", "--sft.lora_alpha=4", "--sft.lora_targets=qkv", "--sft.qlora"):
        assert f"{flag[2:].split('=')[0]} does nothing without --lora" in error(flag)
    assert "drop --train.ema" in error("--lora", "--sft.qlora", "--train.ema=0.99")
    assert "fsdp" in error("--lora", "--train.parallel=fsdp").lower()
    assert not (world["root"] / "bad").exists()  # refused before any work
    words = cli_error(capsys, ["adapt", str(world["bases"]["ar"]), "--out", str(world["root"] / "bad"), "--adapt.lora_rank=4"])
    assert "adapt.lora_rank does nothing without --lora" in words  # the same rule for `sunfish adapt`


def test_qlora_keeps_the_base_in_4_bits_resumes_exactly_and_merges_what_it_trained(world, capsys):
    """--sft.qlora: the wrapped layers compute with NF4 base weights (4-bit, blocks of 64); the checkpoint keeps them
    dequantised, a resumed run rebuilds them from the base and equals an uninterrupted run, and the loader's merged
    network computes what the 4-bit network trained computes."""
    from torchao.quantization import to_nf4

    base, data = world["bases"]["masked"], str(world["data"])
    full, part = world["root"] / "qfull", world["root"] / "qpart"
    argv = ["sft", str(base), "--data", data, "--lora", "--sft.lora_rank=2", "--sft.qlora", "--steps", "6",
            "--save-every", "3", *SFT_FLAGS]
    assert main([*argv, "--out", str(full)]) == 0
    assert "QLoRA (4-bit NF4 base weights" in capsys.readouterr().out
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step-000006")
    assert main([*argv, "--out", str(part), "--resume"]) == 0
    assert run_metrics(part) == run_metrics(full)
    ckpt = list_checkpoints(full)[-1]
    saved = load_file(str(ckpt / "model.safetensors"))
    before = load_model(base, "cpu").model.state_dict()
    name = "blocks.0.attn.qkv"
    stored = saved[f"{name}.base_layer.weight"]
    assert torch.equal(stored, to_nf4(before[f"{name}.weight"], 64, 16).get_original_weight())
    assert not torch.equal(stored, before[f"{name}.weight"])  # really 4-bit: not the base's fp32 weight
    again = load_file(str(list_checkpoints(part)[-1] / "model.safetensors"))
    assert all(torch.equal(saved[k], again[k]) for k in saved)
    wrapped, cfg = wrapped_network(ckpt)  # adapters over the dequantised weights, unmerged
    x = torch.randint(0, cfg.model.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(load_model(full, "cpu").model(x), wrapped(x), atol=1e-5, rtol=0)


def test_qlora_that_would_quantize_nothing_is_one_sentence():
    from sunfish.config import SFTConfig
    from sunfish.lora import check_qlora

    net = torch.nn.Sequential(torch.nn.Linear(24, 20), torch.nn.Linear(64, 64))  # 480 weights: no 4-bit blocks
    with pytest.raises(ValueError, match="would quantize nothing; use --lora alone"):
        check_qlora(net, SFTConfig(lora=True, qlora=True, lora_targets="0"))
    check_qlora(net, SFTConfig(lora=True, qlora=True, lora_targets="1"))  # 4,096 weights: 64 blocks of 64
