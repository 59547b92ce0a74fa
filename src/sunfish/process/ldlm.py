"""Latent diffusion over a frozen LM's compressed states (LDLM, Meshchaninov et al. 2026, arXiv 2605.07933).

A text w (B, L) is read by a frozen causal LM into final hidden states h (B, L, D_base). A Perceiver encoder
E compresses h into K latents z = E(h) (B, K, d), a Perceiver decoder G maps latents back to states
h_hat = G(z) (B, L, D_base), and a readout R turns those into token logits. A DiT f over
the K latents learns them with Gaussian diffusion (variance preserving, q(z_t | z) = N(sqrt(abar_t) z,
(1 - abar_t) I), abar from `process.noise_schedule`; f predicts x0, eps or v, `process.param`). The three
parts are trained jointly on

    L = CE(R G(z + s n), w) + hidden_weight ||G(z + s n) - h||^2 / D_base + ||f(z_t, t) - target||^2 / d

with the paper's recipe (implemented from its description):
* MSE decoder loss: the decoder regresses the frozen LM's hidden states (`process.hidden_weight`), and a
  trainable readout R (D_base -> V, initialised to the base's input embedding with rows of RMS 1 / sqrt(D_base),
  read as a tied output layer, applied to the RMS-normalised decoded state) names each position's token (CE).
  The frozen LM's own head is not used: it predicts the *next* token from h_i, which would cap
  reconstruction at the base's next-token accuracy; prefix-conditioning the frozen LM instead would make
  decoding autoregressive, one base pass per token, losing the parallel decoding latent diffusion is for;
* diffusion-to-encoder warm-up: the diffusion term's gradient into the encoder is scaled by w rising
  linearly from 0 to 1 over `process.diffusion_warmup` training batches (z_d = w z + (1 - w) sg(z));
* adaptive timestep sampling (`process.adaptive_t`): t is drawn from a histogram over T_BINS time bins
  proportional to each bin's running diffusion loss, mixed with the uniform density (share UNIFORM_MIX) so
  every noise level keeps being trained; the running losses are a buffer of the network (checkpointed).
  Both the batch count and the running losses move once per optimiser step, from the batches of every rank
  (LatentLM.after_step), so a DDP run draws the same times as one process with the same global batch;
* decoder-input noise: the decoder's input latents carry N(0, s^2) noise, s ~ U(0, `process.decoder_noise`),
  so it learns to decode the imperfect latents the diffusion will produce.

Prompts (`process.prompt_prob` > 0): a random-length prefix of the text is given to the DiT as extra
tokens (the frozen LM's causal states of the prefix, which see nothing after it) that the latents attend to;
the latents still describe the whole text, and at sampling the prompt's positions are kept as written.

Likelihood: a latent model has no tractable bound on -log p(w) (the decoder is not a density over the
latents' posterior), so none is offered; evaluation reports reconstruction token accuracy instead.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from sunfish.config import ModelConfig, ProcessConfig
from sunfish.model.perceiver import LatentDiT, PerceiverDecoder, PerceiverEncoder, init_weights
from sunfish.process.continuous import GaussianSchedule, forward_sample, target_of, to_x0
from sunfish.process.masked import LossOutput, draw_prompts, sample_times

Reduce = Callable[[list[float]], list[float]] | None  # sums floats over the ranks (training/parallel.py: all_sum)
T_BINS = 20  # time bins of the adaptive timestep sampler
UNIFORM_MIX = 0.2  # share of the uniform density in the adaptive sampler
LOSS_DECAY = 0.9  # running-mean decay of each bin's diffusion loss


class OverBase(nn.Module):
    """A network trained around a frozen base. The base is not a submodule: it is not trained, saved or counted,
    but it follows the network's device and dtype. A loss of several terms records them (`record_terms`); the
    loop adds their means since the last log line (`take_terms`) to metrics.jsonl."""

    def __init__(self, cfg: ModelConfig, base: nn.Module):
        super().__init__()
        self.cfg = cfg
        object.__setattr__(self, "base", base)
        self.terms: dict[str, float] = {}  # sums of the loss terms since `take_terms`
        self.term_batches = 0

    def _apply(self, fn, recurse: bool = True):
        self.base._apply(fn)
        return super()._apply(fn, recurse)

    BASE_FLOPS_PER_PARAM = 2.0  # per token: the base's forward only (its states are read without gradients)

    @property
    def frozen_flops_per_token(self) -> float:
        """The frozen base's FLOPs per training token, BASE_FLOPS_PER_PARAM x N: what MFU and equal-FLOPs
        comparisons add to the trained network's 6 N (training/observe.py)."""
        return self.BASE_FLOPS_PER_PARAM * sum(p.numel() for p in self.base.parameters())

    def take_terms(self, reduce: Reduce = None) -> dict[str, float]:
        """Mean of each loss term over the training batches since the last call (then forgets them); `reduce`
        sums a list of floats over the ranks (every rank calls this at the same step), so under DDP the means are
        over every rank's batches, as one process with the same global batch has them."""
        keys = sorted(self.terms)
        sums = [self.terms[k] for k in keys] + [float(self.term_batches)]
        sums = reduce(sums) if reduce is not None else sums
        self.terms, self.term_batches = {}, 0
        return {k: round(v / max(sums[-1], 1.0), 6) for k, v in zip(keys, sums)}

    def after_step(self, reduce: Reduce = None) -> None:
        """Called by the loop once per optimiser step on every rank (`reduce` as in take_terms); nothing here."""

    def record_terms(self, **terms: torch.Tensor) -> None:
        if not self.training:
            return
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + float(v)
        self.term_batches += 1


class LatentLM(OverBase):
    """Encoder, decoder, readout and DiT over a frozen base (`base`: `.states(tokens)` (B, L, D_base),
    `.embedding()` and `.width`, D_base)."""

    def __init__(self, cfg: ModelConfig, process: ProcessConfig, base: nn.Module):
        super().__init__(cfg, base)  # cfg: sizes of the DiT (and the Perceivers' width); context = longest text
        d, K = process.latent_dim, process.latents
        self.encoder = PerceiverEncoder(cfg, base.width, K, d, process.perceiver_layers)
        self.decoder = PerceiverDecoder(cfg, base.width, K, d, process.perceiver_layers)
        self.denoiser = LatentDiT(cfg, base.width, K, d, prompts=process.prompt_prob > 0)
        embedding = base.embedding().weight  # (V_base, D_base)
        self.readout = nn.Linear(base.width, embedding.shape[0], bias=False)  # token readout of decoded states
        init_weights(self, cfg.init_std)
        with torch.no_grad():  # the base's embedding rows as a tied output layer, unit RMS / sqrt(D): O(1) first logits
            self.readout.weight.copy_(F.rms_norm(embedding.detach().float(), (base.width,)) / base.width**0.5)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # training batches counted (all ranks)
        self.register_buffer("t_loss", torch.ones(T_BINS))  # running diffusion loss per time bin
        # this optimiser step's diffusion-loss sums and counts per time bin, and its batches: folded into t_loss and
        # seen by after_step, summed over ranks (a plain attribute, not a buffer: DDP must not overwrite it)
        self.step_stats = torch.zeros(2 * T_BINS + 1, device="cpu")

    def after_step(self, reduce: Reduce = None) -> None:
        """Fold this step's time-bin losses into the running means and count its batches, over every rank: the
        times of a step are all drawn from the histogram as it was when the step began, on every rank alike."""
        stats = self.step_stats.tolist()
        stats = torch.tensor(reduce(stats) if reduce is not None else stats, dtype=torch.float32)
        self.step_stats = torch.zeros_like(self.step_stats)
        sums, counts, batches = stats[:T_BINS], stats[T_BINS:-1], int(stats[-1])
        mean = sums / counts.clamp_min(1)
        hit = (counts > 0) & mean.isfinite()
        with torch.no_grad():
            fresh = LOSS_DECAY * self.t_loss.float().cpu() + (1 - LOSS_DECAY) * mean
            self.t_loss.copy_(torch.where(hit, fresh, self.t_loss.float().cpu()).to(self.t_loss))
            self.seen += batches

    @property
    def needs_time(self) -> bool:
        return True

    def states(self, tokens: torch.Tensor) -> torch.Tensor:
        """The frozen LM's final hidden states (B, L, D_base), without gradients."""
        with torch.no_grad():
            return self.base.states(tokens).detach()

    def latents(self, h: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(latents (B, K, d) of states h (B, L, D_base), the KL term or None): here the encoder's unit-RMS latents
        and no KL (a VAE encoder draws them with `generator`, or takes the mean without one: process/cola.py)."""
        return self.encoder(h), None

    def logits(self, z: torch.Tensor, length: int) -> torch.Tensor:
        """Token logits (B, L, V) of latents z (B, K, d): the decoder's states read out."""
        return read_tokens(self, self.decoder(z, length))


def read_tokens(model: LatentLM, h_hat: torch.Tensor) -> torch.Tensor:
    """Logits (B, L, V) of decoded states (B, L, D_base): the readout of their RMS-normalised direction, so the
    logits' scale is the readout's own (up to sqrt(D_base) at the start), not the decoder's or the base's."""
    return model.readout(F.rms_norm(h_hat, (h_hat.shape[-1],)))


def draw_times(model: LatentLM, batch: int, cfg: ProcessConfig, generator: torch.Generator) -> torch.Tensor:
    """Diffusion times (B,): uniform (sample_times) or, with adaptive_t, from the loss-proportional histogram."""
    if not cfg.adaptive_t:
        return sample_times(batch, cfg, generator)
    density = model.t_loss.float().to(generator.device)
    p = (1 - UNIFORM_MIX) * density / density.sum() + UNIFORM_MIX / T_BINS  # (T_BINS,)
    bins = torch.multinomial(p, batch, replacement=True, generator=generator)  # (B,)
    u = torch.rand(batch, generator=generator, device=generator.device)
    return ((bins + u) / T_BINS).clamp(cfg.eps, 1.0)


@torch.no_grad()
def _note_time_losses(model: LatentLM, t: torch.Tensor, per_row: torch.Tensor) -> None:
    """Add this batch's per-row diffusion losses to the step's sums per time bin (LatentLM.after_step folds them)."""
    bins = (t * T_BINS).long().clamp(0, T_BINS - 1).cpu()
    model.step_stats[:T_BINS].index_add_(0, bins, per_row.detach().float().cpu())
    model.step_stats[T_BINS:-1].index_add_(0, bins, torch.ones(len(bins)))


def warmup_weight(model: LatentLM, cfg: ProcessConfig) -> float:
    """The share of the diffusion gradient that reaches the encoder now (diffusion-to-encoder warm-up)."""
    return 1.0 if cfg.diffusion_warmup == 0 else min(1.0, int(model.seen) / cfg.diffusion_warmup)


def diffusion_term(model: LatentLM, z: torch.Tensor, h: torch.Tensor, cfg: ProcessConfig,
                   generator: torch.Generator) -> torch.Tensor:
    """Per-row diffusion MSE (B,) on latents z (B, K, d), prompts drawn from the text's states h (B, L, D_base)."""
    B, L = h.shape[:2]
    schedule = GaussianSchedule(cfg.noise_schedule)
    w = warmup_weight(model, cfg)
    z_d = z if w >= 1.0 else w * z + (1 - w) * z.detach()
    t = draw_times(model, B, cfg, generator).to(z.device)  # (B,)
    z_t, eps = forward_sample(z_d, t, schedule, generator)
    prompt, prompt_len = None, None
    if cfg.prompt_prob > 0:
        prompt_len = draw_prompts(B, L, cfg.prompt_prob, generator).sum(1).to(z.device)  # (B,), 0 = no prompt
        prompt = h
    out = model.denoiser(z_t, t, prompt, prompt_len)
    per_row = (out.float() - target_of(z_d, eps, t, schedule, cfg.param).float()).square().mean((1, 2))  # (B,)
    if model.training and cfg.adaptive_t:
        _note_time_losses(model, t, per_row)
    return per_row


def ldlm_loss(model: LatentLM, tokens: torch.Tensor, cfg: ProcessConfig, generator: torch.Generator) -> LossOutput:
    """The joint loss on tokens (B, L); see the module docstring. Terms go to metrics.jsonl apart."""
    B, L = tokens.shape
    h = model.states(tokens).float()  # (B, L, D_base)
    z, kl = model.latents(h, generator)  # (B, K, d)
    s = torch.rand(B, generator=generator, device=generator.device).to(z) * cfg.decoder_noise  # (B,)
    noise = torch.randn(z.shape, generator=generator, device=generator.device).to(z)
    h_hat = model.decoder(z + s[:, None, None] * noise, L)  # (B, L, D_base)
    logits = read_tokens(model, h_hat).float()  # (B, L, V)
    ce = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none")  # (B L,)
    hidden = (h_hat.float() - h).square().mean()
    diffusion = diffusion_term(model, z, h, cfg, generator).mean()
    loss = ce.mean() + cfg.hidden_weight * hidden + diffusion
    with torch.no_grad():
        accuracy = (logits.argmax(-1) == tokens).float().mean()
    terms = {"recon_ce": ce.mean().detach(), "hidden_mse": hidden.detach(), "diffusion_mse": diffusion.detach(),
             "recon_acc": accuracy}
    if kl is not None:  # a VAE encoder's KL, weighted (process/cola.py)
        loss = loss + cfg.kl_weight * kl
        terms["kl"] = kl.detach()
    model.record_terms(**terms)
    if model.training:
        model.step_stats[-1] += 1
    return LossOutput(loss=loss, masked_tokens=B * L, nll_sum=ce.sum().detach())


@torch.no_grad()
def reconstruction(model: LatentLM, tokens: torch.Tensor) -> tuple[int, int]:
    """(correct, total) tokens of w (B, L) read back by argmax from the decoder of its clean latents."""
    z, _ = model.latents(model.states(tokens).float(), None)
    guess = model.logits(z, tokens.shape[1]).argmax(-1)
    return int((guess == tokens).sum()), tokens.numel()


def x0_of(model: LatentLM, z_t: torch.Tensor, t: torch.Tensor, cfg: ProcessConfig, schedule: GaussianSchedule,
          prompt: torch.Tensor | None = None, prompt_len: torch.Tensor | None = None) -> torch.Tensor:
    """The denoiser's clean-latent estimate (B, K, d) of z_t at times t (B,)."""
    return to_x0(model.denoiser(z_t, t, prompt, prompt_len), z_t, t, schedule, cfg.param)
