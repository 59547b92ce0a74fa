"""AR -> diffusion adaptation, model level: the flip, layouts, mask token, LoRA, alignment, cache, trajectories."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from sunfish.adapt.align import TeacherCache, alignment_loss, choose_layers, parse_layers, sequence_key
from sunfish.adapt.model import DiffusionLM, HFBackbone, SunfishBackbone, apply_lora, build_student, load_teacher
from sunfish.adapt.objective import adapted_loss, attach
from sunfish.adapt.run import adapt_config
from sunfish.adapt.tokenizer import MASK_TOKEN, HFTokenizer
from sunfish.adapt.trajectory import TrajectoryStore, commit_order, latest_committed, save_trajectories
from sunfish.adapt.windows import EpochWindows
from sunfish.config import AdaptConfig, AttentionKind, Layout, ModelConfig, ProcessConfig, RunConfig, apply_tree
from sunfish.model.transformer import build_model
from sunfish.registry import training_loss

from test_adapt_helpers import CHAT_TEMPLATE, hf_config, make_hf_model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_hf_model(tmp_path_factory.mktemp("llama"), "llama")


def hf_backbone(kind: str, seed: int = 0) -> HFBackbone:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return HFBackbone(AutoModelForCausalLM.from_config(hf_config(kind, 64)).eval())


def model_cfg(context: int = 128) -> ModelConfig:
    return ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, context=context)


def later_token_changes(logits_of, position: int = 2, later: int = 7) -> float:
    """max |logits[position](x) - logits[position](x')| where x' differs from x at `later` only."""
    x = torch.randint(0, 60, (1, 10), generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[0, later] = (y[0, later] + 1) % 60
    with torch.no_grad():
        return float((logits_of(x)[0, position] - logits_of(y)[0, position]).abs().max())


@pytest.mark.parametrize("kind", ["llama", "qwen3", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_flip_is_real_for_hf_models(kind, attn):
    backbone = hf_backbone(kind)
    backbone.hf.config._attn_implementation = attn
    causal = lambda x: backbone.logits(backbone.states(x, bidirectional=False)[0])
    assert later_token_changes(causal) == 0.0  # the original model cannot see token 7 from position 2
    flipped = DiffusionLM(backbone, model_cfg(), Layout.SAME)
    assert later_token_changes(flipped) > 1e-4


def test_flip_is_real_for_sunfish_causal_models():
    torch.manual_seed(0)
    causal = build_model(dataclasses.replace(model_cfg(64), attention=AttentionKind.CAUSAL)).eval()
    assert later_token_changes(causal) == 0.0
    flipped = build_model(model_cfg(64)).eval()
    flipped.load_state_dict(causal.state_dict())
    assert later_token_changes(DiffusionLM(SunfishBackbone(flipped), model_cfg(64), Layout.SAME)) > 1e-4
    # the backbone's causal pass is the original model's
    x = torch.randint(0, 60, (2, 12))
    h, _ = SunfishBackbone(flipped).states(x, bidirectional=False)
    assert torch.allclose(flipped.head(h), causal(x), atol=1e-5)


def test_shifted_layout_reads_the_previous_position():
    backbone = hf_backbone("llama")
    same = DiffusionLM(backbone, model_cfg(), Layout.SAME)
    shifted = DiffusionLM(backbone, model_cfg(), Layout.SHIFTED)
    x = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        a, b = same(x), shifted(x)
    assert torch.equal(b[:, 1:], a[:, :-1])  # logits at i - 1 predict token i
    assert torch.equal(b[:, 0], a[:, 0])


def test_mask_token_added_with_mean_embedding_and_chat_template_kept(llama_dir, tmp_path):
    tok = HFTokenizer.load(llama_dir)
    assert tok.added_mask and tok.hf.mask_token == MASK_TOKEN and tok.mask_id == len(tok.hf) - 1
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok.decode(tok.encode("Once upon a time")) == "Once upon a time"
    cfg = adapt_config(llama_dir, RunConfig())
    model = build_student(cfg, tmp_path, pretrained=True)
    emb = model.backbone.embedding().weight
    assert emb.shape[0] == tok.vocab_size
    assert torch.allclose(emb[tok.mask_id], emb[: tok.mask_id].mean(0), atol=1e-6)
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(str(llama_dir)).get_input_embeddings().weight
    assert torch.equal(emb[: tok.mask_id], original)  # every existing token keeps its embedding


def test_lora_trains_only_adapter_weights():
    torch.manual_seed(0)
    backbone = hf_backbone("llama")
    apply_lora(backbone.hf, AdaptConfig(lora=True, lora_rank=4))
    model = DiffusionLM(backbone, model_cfg(), Layout.SHIFTED).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x0 = torch.randint(0, 60, (4, 16))
    for step in range(3):
        loss = training_loss(model, x0, ProcessConfig(), 63, torch.Generator().manual_seed(step)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


def test_alignment_loss_is_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    states = {k: torch.randn(2, 8, 16, requires_grad=True) for k in (1, 2)}
    same = {k: v.detach().clone() for k, v in states.items()}
    assert float(alignment_loss(states, same).detach()) == pytest.approx(0.0, abs=1e-6)
    positions = torch.rand(2, 8) < 0.5
    assert float(alignment_loss(states, same, positions).detach()) == pytest.approx(0.0, abs=1e-6)
    other = {k: torch.randn(2, 8, 16) for k in (1, 2)}
    loss = alignment_loss(states, other)
    assert 0.0 < float(loss.detach()) < 4.0
    loss.backward()  # gradients reach the student only
    assert states[1].grad is not None and other[1].grad is None
    # the model path: a student that equals its teacher (no masks, same attention) has zero alignment loss
    backbone = hf_backbone("llama")
    x = torch.randint(0, 60, (2, 10))
    _, s = backbone.states(x, bidirectional=False, layers=[1, 2])
    _, t = backbone.states(x, bidirectional=False, layers=[1, 2])
    assert float(alignment_loss(s, t).detach()) == pytest.approx(0.0, abs=1e-6)


def test_layer_subsampling_and_layer_parsing():
    assert parse_layers("", 4) == [1, 2, 3, 4] and parse_layers("3,1", 4) == [1, 3]
    with pytest.raises(ValueError, match="between 1 and 4"):
        parse_layers("5", 4)
    chosen, scale = choose_layers([1, 2, 3, 4], 2, torch.Generator().manual_seed(0))
    assert len(chosen) == 2 and set(chosen) <= {1, 2, 3, 4} and scale == 2.0
    assert choose_layers([1, 2], 0, torch.Generator()) == ([1, 2], 1.0)


def test_teacher_cache_round_trips_and_checks_its_teacher(tmp_path):
    rows = torch.randint(0, 50, (3, 8))
    states = torch.randn(3, 2, 8, 16)
    cache = TeacherCache(tmp_path / "c", "teacher-a", [1, 2], 16)
    assert cache.get(rows) == [None, None, None] and cache.misses == 3
    cache.put(rows, states)
    again = TeacherCache(tmp_path / "c", "teacher-a", [1, 2], 16)  # a later run reuses the files
    got = again.get(rows)
    assert again.hits == 3 and all(torch.allclose(g.float(), s, atol=2e-2, rtol=2e-2) for g, s in zip(got, states))
    assert again.size_bytes() >= 3 * TeacherCache.entry_bytes(2, 8, 16)
    with pytest.raises(ValueError, match="another --adapt.teacher_cache"):
        TeacherCache(tmp_path / "c", "teacher-b", [1, 2], 16)
    assert sequence_key(rows[0]) != sequence_key(rows[1])


def test_teacher_cache_is_hit_on_the_second_epoch(llama_dir, tmp_path):
    cfg = adapt_config(llama_dir, apply_tree(RunConfig(), {"adapt": {
        "align_weight": 1.0, "teacher_cache": str(tmp_path / "cache"), "align_layers": "1,2", "align_layer_sample": 1,
        "align_token_fraction": 0.5}}))
    model = build_student(cfg, tmp_path, pretrained=True).train()
    objective = attach(model, cfg, lambda: load_teacher(cfg), log=lambda s: None)
    windows = torch.randint(0, 290, (6, 12), generator=torch.Generator().manual_seed(0))
    batches = EpochWindows(windows, seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # epoch 1: 6 windows, every teacher state computed and written
        adapted_loss(model, batches.next_batch(2), ProcessConfig(), 300, gen).loss.backward()
    assert (objective.cache.misses, objective.cache.hits, len(objective.cache)) == (6, 0, 6)
    assert objective.teacher is not None
    for _ in range(3):  # epoch 2: every window found on disk
        adapted_loss(model, batches.next_batch(2), ProcessConfig(), 300, gen)
    assert (objective.cache.misses, objective.cache.hits) == (6, 6)


def test_latest_committed_masks_exactly_the_last_positions():
    order = torch.tensor([[-1, 3, 0, 4, 1, 2], [-1, 0, 1, 2, 3, 4]])
    masked = latest_committed(order, torch.tensor([0.4, 0.6]))
    # row 0: 5 decoded positions, round(0.4 * 5) = 2 latest are ranks 3 and 4 (positions 1 and 3)
    assert masked[0].tolist() == [False, True, False, True, False, False]
    assert masked[1].tolist() == [False, False, False, True, True, True]
    assert not latest_committed(order, torch.tensor([0.0, 0.0])).any()


def test_commit_order_and_trajectory_masking_in_the_loss(llama_dir, tmp_path):
    cfg = adapt_config(llama_dir, RunConfig())
    model = build_student(cfg, tmp_path, pretrained=True).eval()
    x0 = torch.randint(1, 290, (3, 10), generator=torch.Generator().manual_seed(0))
    order = commit_order(model, x0, 300, per_step=2, context=1)
    assert (order[:, 0] == -1).all()
    assert all(sorted(row[1:].tolist()) == list(range(9)) for row in order)  # a permutation of 0..8
    save_trajectories(tmp_path / "t.safetensors", x0, order)
    store = TrajectoryStore(tmp_path / "t.safetensors")
    found_order, found = store.lookup(torch.cat([x0, x0[:1] + 1]))
    assert found.tolist() == [True, True, True, False] and torch.equal(found_order[:3], order)
    # with mix 1 and a fixed ratio the loss masks exactly the latest-committed third of each row
    cfg = dataclasses.replace(cfg, adapt=dataclasses.replace(cfg.adapt, trajectories=str(tmp_path / "t.safetensors"),
                                                             traj_mix=1.0, traj_min_ratio=1 / 3, traj_max_ratio=1 / 3))
    model.train()
    objective = attach(model, cfg, lambda: load_teacher(cfg), log=lambda s: None)
    seen = {}
    real = model.hidden_and_layers
    model.hidden_and_layers = lambda z, layers: seen.setdefault("z", z) is not None and real(z, layers)
    adapted_loss(model, x0, ProcessConfig(), 300, torch.Generator().manual_seed(0))
    assert torch.equal(seen["z"] == 300, latest_committed(order, torch.full((3,), 1 / 3)))
    assert objective.trajectory_rows == 3


@pytest.mark.parametrize("qk_norm,tie,norm_weights,kv,bias", [(False, False, True, 0, False), (True, True, False, 0, False),
                                                          (False, False, True, 2, True)])
def test_sunfish_model_exports_to_an_equivalent_hf_model(qk_norm, tie, norm_weights, kv, bias):
    from sunfish.adapt.export import sunfish_to_hf

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, context=64, qk_norm=qk_norm,
                                    tie_embeddings=tie, norm_weights=norm_weights, rope_base=500.0, n_kv_heads=kv,
                                    qkv_bias=bias, norm_eps=1e-6 if bias else 0.0)).eval()
    for p in model.parameters():  # weights far from the init, so a wrong map cannot hide
        torch.nn.init.normal_(p, 1.0, 0.2) if p.dim() == 1 else torch.nn.init.normal_(p, std=0.3)
    hf = sunfish_to_hf(model)
    x = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        theirs = hf(x, attention_mask=torch.ones(2, 1, 20, 20, dtype=torch.bool)).logits
        assert torch.allclose(model(x), theirs, atol=1e-4)
    relu = build_model(ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, context=64, mlp="relu2"))
    with pytest.raises(ValueError, match="SwiGLU"):
        sunfish_to_hf(relu)
