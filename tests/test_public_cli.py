"""The command line and the Python API on public checkpoint folders (tiny LLaDA and Dream made by the upstream
code, tests/public_models.py): what they cannot open is one sentence; sample, infill, batched prompts,
remasking, EOS stopping, bench sample and tune-sampler run on what they can."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import cli_error
from public_models import EOS, MASK, PROMPT
from sunfish.cli import main

FAMILIES = ("llada", "dream")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and other runs may share the cores
    yield
    torch.set_num_threads(threads)


def _copy(upstream, name: str, tmp_path):
    return shutil.copytree(upstream.root / name, tmp_path / name)


def _run_json(capsys, argv: list[str]) -> list[dict]:
    capsys.readouterr()
    assert main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


# ---- what cannot be opened -----------------------------------------------------------------------------------

def test_unsupported_configs_are_one_sentence(upstream, tmp_path, capsys):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    err = cli_error(capsys, ["sample", str(llama), "--prompt", "hi"])
    assert "'llama' model" in err and "LLaDA, Dream" in err

    sequential = _copy(upstream, "llada", tmp_path)
    config = json.loads((sequential / "config.json").read_text())
    (sequential / "config.json").write_text(json.dumps(config | {"block_type": "sequential"}))
    err = cli_error(capsys, ["sample", str(sequential), "--prompt", "hi"])
    assert "block_type = 'sequential'" in err


def test_sharded_weights_load_and_damaged_shards_are_one_sentence(upstream, tmp_path, capsys):
    """The released checkpoints come in shards: two shards and their index load as the one file does; a missing
    shard or a tensor of the wrong shape is one sentence."""
    from safetensors.torch import load_file, save_file

    from sunfish.loading import load_model

    folder = _copy(upstream, "llada", tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(folder / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: file for file, part in shards.items() for n in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    ids = torch.tensor([PROMPT + [MASK] * 4])
    one, two = (load_model(p).model for p in (upstream.root / "llada", folder))
    with torch.no_grad():
        assert torch.equal(one.head(one.hidden(ids, None)), two.head(two.hidden(ids, None)))

    (folder / "model-00002-of-00002.safetensors").unlink()
    err = cli_error(capsys, ["sample", str(folder), "--prompt", "hi"])
    assert "model-00002-of-00002.safetensors" in err and "model.safetensors.index.json" in err

    damaged = _copy(upstream, "llada", tmp_path / "damaged")
    name = "model.transformer.blocks.0.q_proj.weight"
    save_file(tensors | {name: tensors[name][:32].clone()}, str(damaged / "model.safetensors"), metadata={"format": "pt"})
    err = cli_error(capsys, ["sample", str(damaged), "--prompt", "hi"])
    assert "shape" in err and "blocks.0.attn.qkv.weight" in err


# ---- what runs on them -------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_sample_infill_and_batched_prompts(upstream, tmp_path, capsys, family):
    """sample --json and infill on a public folder; prompts of different lengths in one batch decode as each
    alone (greedy, so the seeds do not matter)."""
    folder = str(upstream.root / family)
    one = _run_json(capsys, ["sample", folder, "--prompt", "Once", "--length", "12", "--steps", "6", "--json"])[0]
    assert one["text"].startswith("Once") and one["steps"] >= 1 and one["nfe"] >= one["steps"]

    filled = _run_json(capsys, ["infill", folder, "--text", "ab[MASK:4]cd", "--json"])[0]
    assert filled["text"].startswith("ab") and filled["text"].endswith("cd") and len(filled["fills"]) == 1

    prompts = ["Once", "A much longer prompt than the first"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    flags = ["--length", "8", "--steps", "8", "--json"]
    batched = _run_json(capsys, ["sample", folder, "--prompts", str(tmp_path / "prompts.txt"), *flags])
    alone = [_run_json(capsys, ["sample", folder, "--prompt", p, "--seed", str(i), *flags])[0]
             for i, p in enumerate(prompts)]
    assert [b["text"] for b in batched] == [a["text"] for a in alone]


def test_remasking_takes_tokens_back(upstream):
    """ReMDM remasking on a loaded LLaDA: some committed tokens are masked again, and the canvas still fills."""
    import sunfish
    from sunfish.sample.text import decode_canvas

    model = sunfish.load(upstream.root / "llada", device="cpu")
    cfg = model.sampler(length=16, steps=16, block_length=0, remask="rescale", remask_eta=1.0, remask_start=0.0,
                        temperature=0.5)
    x = torch.tensor([PROMPT + [MASK] * 16])
    remasked = []
    out = decode_canvas(model, x, len(PROMPT), cfg, torch.Generator().manual_seed(0),
                        recorder=lambda info: remasked.append(int(info.remasked.sum())))
    assert sum(remasked) > 0 and not (out.tokens == MASK).any()


def test_generation_stops_at_eos(upstream):
    """Swapping the embedding and head rows of EOS and of a token t relabels t as EOS and changes nothing else, so
    greedy decoding then writes EOS where it wrote t: the text ends there, and decoding stops after that block."""
    import sunfish

    model = sunfish.load(upstream.root / "llada", device="cpu")
    settings = dict(steps=16, block_length=4, temperature=0.0)
    before = model.generate("Once", max_new_tokens=16, stop_at_eos=False, **settings).ids
    assert len(before) == 16 and EOS not in before
    at = next(i for i in range(4, 16) if before[i] not in before[:i])  # a token first written after the first block
    with torch.no_grad():
        for weight in (model.model.embed.weight, model.model.lm_head.weight):
            weight[[before[at], EOS]] = weight[[EOS, before[at]]]
    after = model.generate("Once", max_new_tokens=16, **settings)
    assert after.ids == before[:at] and after.steps == 4 * (at // 4 + 1) < 16
    assert after.text == "Once" + model.tokenizer.decode(before[:at])


def test_python_api_generates_infills_and_scores(upstream):
    import sunfish

    for family in FAMILIES:
        model = sunfish.load(upstream.root / family, device="cpu")
        out = model.generate("Once", max_new_tokens=8, steps=8)
        assert out.text.startswith("Once") and len(out.ids) <= 8
        assert model.infill("ab[MASK:3]cd").text.startswith("ab")
        score = model.score("the cat sat on the mat.", min_rounds=2, max_rounds=4, rel_se=0.5)
        assert 0 < score.nats_per_token < 2 * torch.log(torch.tensor(300.0)).item()  # a random model: about log V


def test_eval_likelihood_runs(upstream, tmp_path, capsys):
    (tmp_path / "held.txt").write_text("the cat sat on the mat.\nthe dog ran to the park.\n")
    body = _run_json(capsys, ["eval", str(upstream.root / "llada"), "--suite", "likelihood", "--data",
                              str(tmp_path / "held.txt"), "--out", str(tmp_path / "eval"), "--json",
                              "--eval.max_rounds=4"])[0]
    assert body["suites"]["likelihood"]["nats_per_token"] > 0


def test_bench_sample_and_tune_sampler_run(upstream, tmp_path, capsys):
    capsys.readouterr()
    assert main(["bench", "sample", str(upstream.root / "llada"), "--lengths", "8", "--batch", "1",
                 "--repeats", "1"]) == 0
    table = capsys.readouterr().out
    assert "| 8 | 1 | baseline" in table and "dual cache" in table

    (tmp_path / "prompts.txt").write_text("Once\nThe cat\n")
    assert main(["tune-sampler", str(upstream.root / "dream"), "--prompts", str(tmp_path / "prompts.txt"),
                 "--length", "8", "--steps", "4", "--thresholds", "0.9", "--factors", "", "--entropy-bounds", "",
                 "--block-lengths", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "chosen:" in out and "--dry-run: nothing written" in out
