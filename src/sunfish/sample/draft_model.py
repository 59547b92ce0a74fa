"""Opening the draft model of `--sampler.speculate draft` (drafter.py proposes with it): loaded once per target,
on the target's device and dtype, refused in one sentence when it cannot draft for it."""

from __future__ import annotations

from sunfish.config import SamplerConfig, Speculate
from sunfish.loading import load_model


def same_tokenizer(a, b) -> bool:
    """Do two tokenizers map the same ids to the same tokens?"""
    if a.vocab_size != b.vocab_size or a.mask_id != b.mask_id:
        return False
    if hasattr(a, "sha256") and hasattr(b, "sha256"):
        return a.sha256() == b.sha256()
    return all(a.token_text(i) == b.token_text(i) for i in range(a.vocab_size))


def open_draft(loaded, cfg: SamplerConfig):
    """The draft model `cfg.draft` names, loaded once per target (kept in `loaded.drafts`), on the target's device
    and dtype; None unless speculate=draft. Refused: another tokenizer, a process that cannot draft."""
    if cfg.speculate is not Speculate.DRAFT or not cfg.draft:
        return None
    if cfg.draft not in loaded.drafts:
        draft = load_model(cfg.draft, loaded.device, dtype=next(loaded.model.parameters()).dtype)
        if not same_tokenizer(draft.tokenizer, loaded.tokenizer):
            raise ValueError(f"the draft model {cfg.draft} has another tokenizer than the model; a draft must share "
                             "its vocabulary (train one from this model with `sunfish draft`)")
        if not (draft.spec.causal or (draft.spec.infill and draft.spec.parallel)):
            raise ValueError(f"the draft model {cfg.draft} is {draft.spec.a_label} model; a draft must be a masked "
                             "diffusion or autoregressive model")
        loaded.drafts[cfg.draft] = draft
    return loaded.drafts[cfg.draft]
