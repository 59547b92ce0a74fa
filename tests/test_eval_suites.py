"""Generation quality, infilling, translation scoring and the lm-eval adapter on tiny checkpoints."""

import math

import pytest
import torch
import torch.nn.functional as F

from sunfish.cli import main
from sunfish.config import EvalConfig
from sunfish.eval.generative import (HuggingFaceReference, ReferenceError, SunfishReference, diversity,
                                     generation_suite, load_reference, step_counts)
from sunfish.eval.infill import InfillUnsupported, infill_suite, span_mask
from sunfish.eval.likelihood import held_out
from sunfish.eval.translation import TranslationError, read_pairs, score, translation_suite
from sunfish.loading import load_model

from test_train import DOCS

TINY = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=64", "--train.batch_size=4",
        "--train.val_every=0", "--data.val_fraction=0.2", "--data.tokenizer=bpe", "--data.bpe_vocab=300", "--no-progress"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    out = {}
    for name, extra in (("mdlm", []), ("ar", ["--objective", "ar"])):
        out[name] = root / name
        assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(out[name]), "--steps", "3",
                     *extra, *TINY]) == 0
    return out


def test_diversity_by_hand():
    figures = diversity(["a b a b a", "c d"])
    assert figures["distinct_1"] == pytest.approx(4 / 7)  # words a b a b a c d
    assert figures["distinct_2"] == pytest.approx(3 / 5)  # ab ba ab ba | cd
    assert figures["distinct_3"] == pytest.approx(2 / 3)  # aba bab aba
    p = [3 / 7, 2 / 7, 1 / 7, 1 / 7]
    assert figures["unigram_entropy"] == pytest.approx(-sum(q * math.log2(q) for q in p))
    assert figures["repetition_4"] == pytest.approx(0.0)  # 'a b a b', 'b a b a' are distinct
    assert diversity(["x y z x y z x y z"])["repetition_4"] == pytest.approx(3 / 6)


def test_step_counts():
    assert step_counts("16,64,256", 100, is_ar=False) == [16, 64, 100]
    assert step_counts("16,64", 100, is_ar=True) == [100]
    with pytest.raises(ValueError, match="comma-separated"):
        step_counts("16;64", 100, is_ar=False)


def test_hugging_face_reference_scores_exactly(runs, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = load_model(runs["ar"], CPU).tokenizer
    config = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ref = load_reference(tmp_path, CPU)
    assert isinstance(ref, HuggingFaceReference)
    nats, n = ref.nats("the cat sat")
    ids = ref.tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
    ids = ([ref.tokenizer.bos_token_id] if ref.tokenizer.bos_token_id is not None else []) + ids
    with torch.no_grad():
        logits = ref.model(input_ids=torch.tensor([ids])).logits[0, :-1]
    assert n == len(ids) - 1
    assert nats == pytest.approx(float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum")), rel=1e-5)


def test_generation_suite_with_a_sunfish_reference(runs):
    loaded = load_model(runs["mdlm"], CPU)
    ref = load_reference(runs["ar"], CPU)
    assert isinstance(ref, SunfishReference)
    cfg = EvalConfig(samples=2, sample_length=12, sample_steps="3,12", batch_size=2)
    results = generation_suite(loaded, ref, cfg, log=lambda _: None)
    assert [r.steps for r in results] == [3, 12]
    for r in results:
        assert r.samples == 2 and 1.0 < r.gen_perplexity < 10 * 300 and r.nfe > 0
        assert 0.0 <= r.distinct_1 <= 1.0 and r.reference.startswith("sunfish:")
    with pytest.raises(ReferenceError, match="must be causal"):
        load_reference(runs["mdlm"], CPU)


def test_span_masks():
    gen = torch.Generator().manual_seed(0)
    for kind, n in (("1", 1), ("4", 4), ("16", 16), ("middle_third", 10)):
        spans = span_mask(30, 5, kind, gen)
        assert spans.shape == (5, 30) and not spans[:, 0].any() and (spans.sum(1) == n).all()
        rows, cols = spans.nonzero(as_tuple=True)
        for r in range(5):  # one contiguous span per row
            c = cols[rows == r]
            assert int(c.max() - c.min()) == n - 1


def test_infill_suite(runs):
    loaded = load_model(runs["mdlm"], CPU)
    windows = held_out(DOCS[:8], loaded.tokenizer, 40).windows[0]
    results = infill_suite(loaded, windows, EvalConfig(infill_windows=3, max_rounds=4), log=lambda _: None)
    assert [r.span for r in results] == ["1", "4", "16", "middle_third"]
    for r in results:
        assert 0.0 <= r.token_accuracy <= 1.0 and 0.0 <= r.exact_match <= 1.0 and r.fill_nats_per_token > 0
    with pytest.raises(InfillUnsupported, match="masked diffusion"):
        infill_suite(load_model(runs["ar"], CPU), windows, EvalConfig())


def test_bleu_and_chrf_of_identical_text_are_100():
    outputs = ["Том здесь.", "Я люблю кошек и собак."]
    bleu, chrf = score(outputs, [[o] for o in outputs])
    assert bleu == pytest.approx(100.0) and chrf == pytest.approx(100.0)
    assert score(["совсем другое"], [["Том здесь."]])[0] < 10


def test_parallel_file_and_translation_suite(runs, tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("en\tru\tru_alternatives\nthe cat\tкот\tкошка ||| котик\nthe dog\tсобака\t\nthe sun\tсолнце\t\n",
                   encoding="utf-8")
    pairs = read_pairs(tsv, "en-ru")
    assert pairs[0].references == ["кот", "кошка", "котик"] and read_pairs(tsv, "ru-en")[1].source == "собака"
    with pytest.raises(TranslationError, match="en-ru or ru-en"):
        read_pairs(tsv, "en-de")
    (tmp_path / "bad.tsv").write_text("a\tb\n1\t2\n", encoding="utf-8")
    with pytest.raises(TranslationError, match="'en' and 'ru' columns"):
        read_pairs(tmp_path / "bad.tsv", "en-ru")
    result = translation_suite(load_model(runs["mdlm"], CPU), tsv, EvalConfig(translation_pairs=2), log=lambda _: None)
    assert result.pairs + result.pairs_skipped == 2 and 0.0 <= result.bleu <= 100.0 and 0.0 <= result.chrf <= 100.0


def test_lm_eval_adapter_answers_requests(runs):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from sunfish.eval.harness import SunfishLM

    assert get_model("sunfish") is SunfishLM
    lm = SunfishLM(path=str(runs["ar"]), device="cpu")
    request = Instance("loglikelihood", doc={}, arguments=("the cat", " sat on"), idx=0)
    [(logp, greedy)] = lm.loglikelihood([request])
    tok, model = lm.loaded.tokenizer, lm.loaded.model
    ids = [tok.bos_id, *tok.encode("the cat"), *tok.encode(" sat on")]
    start = 1 + len(tok.encode("the cat"))
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([ids[:-1]]))[0].float(), -1)
    expected = sum(float(logprobs[i - 1, ids[i]]) for i in range(start, len(ids)))
    assert logp == pytest.approx(expected, rel=1e-5) and isinstance(greedy, bool)

    diffusion = SunfishLM(path=str(runs["mdlm"]), device="cpu", mc_samples=8)
    [(bound, _)] = diffusion.loglikelihood([request])
    assert bound < 0 and math.isfinite(bound)
    [rolling] = diffusion.loglikelihood_rolling([Instance("loglikelihood_rolling", doc={}, arguments=("the cat sat.",), idx=0)])
    assert rolling < 0
    [text] = lm.generate_until([Instance("generate_until", doc={}, arguments=("the", {"until": ["."], "max_gen_toks": 8}), idx=0)])
    assert isinstance(text, str) and "." not in text


def test_lm_eval_runs_a_local_yaml_task(runs, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    import json

    rows = [{"question": "the cat sat on the", "choices": [" mat", " zzq"], "answer": 0},
            {"question": "she was very", "choices": [" happy", " qqzz"], "answer": 0}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "task.yaml").write_text(
        "task: sunfish_local_choice\ndataset_path: json\ndataset_kwargs:\n"
        f"  data_files:\n    test: {tmp_path / 'data.jsonl'}\n  cache_dir: {tmp_path / 'cache'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: '{{answer}}'\ndoc_to_choice: '{{choices}}'\nmetric_list:\n  - metric: acc\n"
        "    aggregation: mean\n    higher_is_better: true\n", encoding="utf-8")
    out = tmp_path / "results.json"
    assert main(["lm-eval", str(runs["ar"]), "--tasks", "sunfish_local_choice", "--include-path", str(tmp_path),
                 "--only-included", "--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))["sunfish_local_choice"]
    assert result["sample_len"] == 2 and 0.0 <= result["acc,none"] <= 1.0


@pytest.mark.parametrize("name", ["mdlm", "ar"])
def test_whole_samples_keep_every_generated_token(runs, name):
    """sample_texts(whole=True): every sample fills its canvas and keeps it (no stop or cut at EOS), EOS and other
    special tokens dropped from the text only; the plain call cuts at the first EOS."""
    import torch

    from sunfish.eval.generative import sample_texts
    from sunfish.sample.text import generate_batch
    import dataclasses

    loaded = load_model(runs[name])
    eos = loaded.tokenizer.eos_id
    bias = torch.zeros(loaded.model.lm_head.weight.shape[0])
    bias[eos] = 6.0  # make EOS likely, so that the cut would show
    handle = loaded.model.lm_head.register_forward_hook(lambda m, i, out: out + bias.to(out))
    try:
        cfg = dataclasses.replace(loaded.cfg.sampler, length=12, steps=12, temperature=1.0)
        whole = generate_batch(loaded, ["", ""], cfg, seed=1, whole=True)
        cut = generate_batch(loaded, ["", ""], cfg, seed=1)
        texts, _, _ = sample_texts(loaded, 2, 12, 12, 1.0, 1, whole=True)
    finally:
        handle.remove()
    assert all(len(g.ids) == 12 for g in whole) and any(eos in g.ids for g in whole)
    assert [g.text for g in whole] == [loaded.tokenizer.decode(g.ids) for g in whole] == texts
    assert all(eos not in g.ids for g in cut) and any(len(g.ids) < 12 for g in cut)
