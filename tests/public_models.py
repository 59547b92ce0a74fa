"""Tiny random LLaDA and Dream checkpoints made by the upstream code itself (../shared/reference, run in the
oracle environment of tests/oracle.py), saved in the Hugging Face layout of the released models with a
byte-level tokenizer beside them, so that Sunfish opens them as it opens GSAI-ML/LLaDA-8B-Instruct or
Dream-org/Dream-v0-Instruct-7B; and, from the same oracle run, what the upstream code computes on them.

One oracle run does everything (building, LLaDA's and Fast-dLLM's samplers, Dream's, LLaDA's likelihood): the
reference code takes ~10 s to import, so each extra run would cost that again.

Special ids: pad 0, bos 1, eos 2, mask 299 (the last id, as both released models put [MASK] near the end).
The output-head row of the mask id is zeroed in the saved weights: the [MASK] logit is then 0 at every position,
while the largest of the other 299 random logits is positive, so no sampler ever draws [MASK]. (The upstream
samplers draw from every token, and a drawn [MASK] leaves its position masked, which LLaDA, Fast-dLLM and Dream
each handle in their own way; the comparisons test the samplers, not that corner.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from oracle import run_oracle

PAD, BOS, EOS, MASK, VOCAB = 0, 1, 2, 299, 300
CHAT_TEMPLATE = ("{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")
PROMPT = [1, 75, 104, 101, 35, 102, 111, 120]  # <bos> and seven byte tokens
SATURATE = 1300.0  # the saturated model's head = LLaDA's x this (see test_public_models.py)

# (gen_length, block_length, steps) for LLaDA's generate (steps % blocks == 0, as it asserts)
LLADA_CASES = [(16, 16, 16), (16, 8, 8), (24, 8, 12), (16, 4, 8)]
# (function, threshold, gen_length, block_length, steps) for Fast-dLLM (steps >= 2 per block: its cached
# variants index the step counts past the first step, so one step per block raises IndexError there)
FAST_CASES = [(fn, threshold, *shape) for fn in ("generate", "generate_with_prefix_cache", "generate_with_dual_cache")
              for threshold in (None, 0.9, 0.05) for shape in ((16, 8, 8), (24, 8, 12))]
# (alg, max_new_tokens, steps, top_k, eps) for Dream's diffusion_generate; top_k "default" = not passed (then
# transformers 4.46 makes it 50, see sunfish/families/dream.py); eps 0.1 with steps > tokens, where Dream's counts
# depend on all its steps. Not "entropy" with top_k None: on this near-uniform model, entropies over all 300
# tokens tie exactly in float32 at the cut, where torch.topk's order among ties is unspecified.
DREAM_CASES = ([(alg, g, s, "default", 1e-3) for alg in ("entropy", "maskgit_plus", "topk_margin")
                for g, s in ((16, 16), (24, 6), (20, 7), (8, 16))]
               + [(alg, 16, 8, None, 1e-3) for alg in ("maskgit_plus", "topk_margin")]
               + [(alg, g, s, "default", 0.1) for alg in ("entropy", "maskgit_plus") for g, s in ((8, 12), (10, 18))])
# Fast-dLLM on the saturated model: (function, threshold, gen_length, block_length, steps). A bar of 1.0 commits
# every position whose float64 confidence is exactly 1.0, a set, so ties do not matter; the fixed rule is left out
# because there several float64 confidences are exactly 1.0 at the cut, where torch.topk's order is unspecified.
SATURATED_CASES = [(fn, 1.0, 16, 8, 8) for fn in ("generate", "generate_with_prefix_cache", "generate_with_dual_cache")]
LIKELIHOOD = {"prompt": PROMPT, "answer": [88, 114, 104, 119, 35, 111, 104, 112, 118, 35, 115, 104, 120, 47, 2],
              "batch": 32, "batches": 16}

REFERENCE = r'''
import contextlib, copy, io, sys, types
from pathlib import Path
torch.set_num_threads(1)
import llada.modeling_llada as modeling
sys.modules["model"] = types.SimpleNamespace(modeling_llada=modeling)  # Fast-dLLM's own layout: model/modeling_llada.py
sys.modules["model.modeling_llada"] = modeling
from llada import LLaDAConfig, LLaDAModelLM, fast_dllm_generate as fast
from llada.llada_generate import generate as llada_generate
from llada.llada_get_log_likelihood import get_log_likelihood
from dream.configuration_dream import DreamConfig
from dream.modeling_dream import DreamModel

def save(model, name, head):
    with torch.no_grad():
        head.weight[299] = 0  # no sampler ever draws [MASK] (tests/public_models.py)
    model.save_pretrained(str(Path(root) / name), safe_serialization=True)

torch.manual_seed(0)
llada = LLaDAModelLM(LLaDAConfig(
    d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, mlp_ratio=2, vocab_size=300,
    embedding_size=300, max_sequence_length=128, mask_token_id=299, pad_token_id=0, eos_token_id=2, rope=True,
    rope_theta=500000.0, include_bias=False, block_type="llama", activation_type="silu", layer_norm_type="rms",
    weight_tying=False, attention_layer_norm=False, flash_attention=False, init_device="cpu"), init_params=True)
save(llada, "llada", llada.model.transformer.ff_out)
hot = copy.deepcopy(llada)
with torch.no_grad():
    hot.model.transformer.ff_out.weight *= saturate
save(hot, "saturated", hot.model.transformer.ff_out)
torch.manual_seed(1)
dream = DreamModel(DreamConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                               mask_token_id=299, pad_token_id=0, bos_token_id=1, eos_token_id=2))
save(dream, "dream", dream.lm_head)

# What users run: the saved folders, opened by the upstream classes.
llada = LLaDAModelLM.from_pretrained(root + "/llada").eval()
hot = LLaDAModelLM.from_pretrained(root + "/saturated").eval()
dream = DreamModel.from_pretrained(root + "/dream").eval()
prompt = torch.tensor([prompt_ids])
result = {}
with torch.no_grad():
    result["logits"] = {"llada": llada(logit_ids).logits, "dream": dream(logit_ids, "full", None).logits}

result["llada"] = [llada_generate(llada, prompt, steps=s, gen_length=g, block_length=b, temperature=0.0,
                                  remasking="low_confidence", mask_id=299) for g, b, s in llada_cases]

def fast_run(model, fn, threshold, g, b, s):
    out, nfe = getattr(fast, fn)(model, prompt, steps=s, gen_length=g, block_length=b, temperature=0.0,
                                 remasking="low_confidence", mask_id=299, threshold=threshold)
    return out

result["fast"] = [fast_run(llada, *case) for case in fast_cases]
result["saturated"] = [fast_run(hot, *case) for case in saturated_cases]

# The threshold equality case: the bar set to the second-best float64 confidence of the first step, which
# Fast-dLLM keeps (it drops a confidence only when it is below the bar).
x = torch.cat([prompt, torch.full((1, 16), 299)], 1)
with torch.no_grad():
    p = torch.softmax(llada(x).logits[0, prompt.shape[1] : prompt.shape[1] + 8].to(torch.float64), -1)
bar = float(p.max(-1).values.sort(descending=True).values[1])
result["bar"] = bar
result["bar_out"] = fast_run(llada, "generate", bar, 16, 8, 8)

result["dream"] = []
for alg, g, s, top_k, eps in dream_cases:
    extra = {} if top_k == "default" else {"top_k": top_k}
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the steps and the time taken
        result["dream"].append(dream.diffusion_generate(prompt, max_new_tokens=g, steps=s, alg=alg, temperature=0.0,
                                                        eps=eps, **extra))

torch.manual_seed(0)
lk = likelihood
result["likelihood"] = [get_log_likelihood(llada, torch.tensor(lk["prompt"]), torch.tensor(lk["answer"]),
                                           mc_num=lk["batch"], batch_size=lk["batch"], mask_id=299)
                        for _ in range(lk["batches"])]
'''


def logit_ids() -> torch.Tensor:
    """Two rows of 20 tokens, some masked, for the logits comparison. (2, 20)"""
    ids = torch.randint(3, 299, (2, 20), generator=torch.Generator().manual_seed(0))
    ids[0, 8:14] = MASK
    ids[1, 2::3] = MASK
    return ids


@dataclass(frozen=True)
class Upstream:
    root: Path  # holds the folders llada, dream and saturated
    ref: dict  # what the upstream code computed on them (the keys of REFERENCE's `result`)


def build(root: Path) -> Upstream:
    """Make the three folders under `root` and run the upstream code on them."""
    ref = run_oracle(REFERENCE, root=str(root), saturate=SATURATE, prompt_ids=PROMPT, logit_ids=logit_ids(),
                     llada_cases=LLADA_CASES, fast_cases=FAST_CASES, saturated_cases=SATURATED_CASES,
                     dream_cases=DREAM_CASES, likelihood=LIKELIHOOD)
    for name in ("llada", "dream", "saturated"):
        write_tokenizer(root / name)
    return Upstream(root=root, ref=ref)


def greedy(loaded, length: int, *, eps: float | None = None, callback=None, **settings):
    """Sunfish's sampler on the canvas PROMPT + [MASK] x length, as the upstream samplers run: greedy, drawing
    from every token (suppress_special false), no EOS stop; `eps` replaces the process's (Dream's eps).
    Returns the SampleResult."""
    from sunfish.config import SamplerConfig
    from sunfish.registry import DecodeJob, decode

    x = torch.tensor([PROMPT + [MASK] * length])
    cfg = SamplerConfig(length=length, temperature=0.0, suppress_special=False, stop_at_eos=False, **settings)
    process = loaded.cfg.process if eps is None else dataclasses.replace(loaded.cfg.process, eps=eps)
    job = DecodeJob(mask_id=MASK, process=process, generator=torch.Generator().manual_seed(0), callback=callback)
    return decode(loaded.model, x, len(PROMPT), cfg, job)


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order (the ByteLevel alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spare = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(spare)) for b in range(256)]


def write_tokenizer(folder: Path) -> None:
    """A byte-level BPE without merges: <pad> <bos> <eos> at 0..2, the 256 byte symbols at 3..258 (byte b is
    id b + 3), two-letter fillers (decodable, never produced by encoding) at 259..298, <mask> at 299."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    letters = "etaoinsh"
    vocab = {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS}
    vocab.update({s: 3 + i for i, s in enumerate(_byte_symbols())})
    vocab.update({a + b: 259 + i for i, (a, b) in enumerate((a, b) for a in letters for b in letters[:5])})
    vocab["<mask>"] = MASK
    assert len(vocab) == VOCAB
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<pad>", "<bos>", "<eos>", "<mask>")])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                            mask_token="<mask>", chat_template=CHAT_TEMPLATE).save_pretrained(str(folder))
