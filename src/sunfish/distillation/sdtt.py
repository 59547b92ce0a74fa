"""Self-Distillation Through Time (SDTT; Deschenaux & Gulcehre 2024, arXiv 2410.21035) for masked and block models.

A student that decodes in k steps learns to reproduce, in one step, what its teacher produces in two steps of a
2k-step schedule. Each training row is cut into blocks (the whole row for a masked model, the trained blocks for
a block model); block b gets a time t_b = j / k with j uniform in {1, ..., k}, the times the student's k-step
sampler visits, and is corrupted by the absorbing process: z_t ~ q(z_t | x0), each token masked with probability
1 - alpha(t_b). With dt = 1 / k the teacher then takes two ancestral steps (MDLM's reverse step, Sahoo et al. 2024):

    from time u to u - dt/2 each mask is revealed with probability (alpha(u - dt/2) - alpha(u)) / (1 - alpha(u)),
    its token drawn from the teacher's distribution x_theta(z_u) ([MASK] excluded),

starting at u = t, then at u = t - dt/2 from the state the first step left. The teacher target of a position masked
in z_t (the paper's Algorithm 1, "computing the teacher targets") is the teacher's distribution at the step that
revealed it: x_theta(z_t) for positions revealed in the first step, x_theta(z_{t - dt/2}) for those revealed in the
second, and, for positions still masked after both steps, the teacher's prediction of the last step,
x_theta(z_{t - dt/2}) (no third pass). Targets are distributions, not the sampled tokens: the sample only decides
which positions the second step sees revealed. The loss is the paper's best divergence, the KL of the student's
one-step prediction from the target, averaged over the positions masked in z_t:

    L = 1 / |M| sum over i in M of KL( target_i || p_student(. | z_t)_i ),   M = the masked positions of z_t.

Model time inputs (time-conditioned models) are computed from each row's masked fraction, as the sampler does
(sample/unmask.py), so student and teacher see the inputs they see when decoding. A block model sees each block
with the clean blocks of x0 before it (BD3-LM's training view, the registry's `denoiser`).
"""

from __future__ import annotations

import torch

from sunfish.config import ProcessConfig
from sunfish.process.block import block_ids
from sunfish.process.masked import LossOutput, corrupt
from sunfish.process.schedules import MaskSchedule
from sunfish.registry import spec_of


def block_times(x0: torch.Tensor, process: ProcessConfig, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Per-token times (B, L) on the student's grid {1, ..., steps} / steps, one draw per block (the whole row when
    process.block_size is 0)."""
    B, L = x0.shape
    ids = block_ids(L, process.block_size or L, x0.device)  # (L,)
    n_blocks = int(ids[-1]) + 1
    j = torch.randint(1, steps + 1, (B, n_blocks), generator=generator, device=generator.device).to(x0.device)
    return (j.float() / steps)[:, ids]  # (B, L)


def model_time(z: torch.Tensor, mask_id: int, schedule: MaskSchedule) -> torch.Tensor:
    """Time (B,) of each row from its masked fraction, as the sampler gives it to time-conditioned models."""
    return schedule.time_of_alpha(1.0 - (z == mask_id).float().mean(1))


def log_probs(model, z: torch.Tensor, x0: torch.Tensor, where: torch.Tensor, process: ProcessConfig, mask_id: int,
              schedule: MaskSchedule) -> torch.Tensor:
    """log p (N, V) of the model at the N positions `where` (B, L) of z (B, L); [MASK] gets probability 0."""
    h = spec_of(process).denoiser(model, z, x0, model_time(z, mask_id, schedule), process)  # (B, L, D)
    logits = model.head(h[where]).float()  # (N, V)
    logits[:, mask_id] = float("-inf")
    return logits.log_softmax(-1)


def gumbel_draw(logp: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token (N,) from each row of log-probabilities (N, V) by the Gumbel-max trick."""
    u = torch.rand(logp.shape, generator=generator, device=generator.device).to(logp.device).clamp(1e-20, 1.0 - 1e-7)
    return (logp - torch.log(-torch.log(u))).argmax(-1)


@torch.no_grad()
def teacher_targets(teacher, zt: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, dt: float, process: ProcessConfig,
                    mask_id: int, generator: torch.Generator) -> torch.Tensor:
    """The teacher's target log-distributions (N, V) at the N masked positions of zt (B, L), in row-major order,
    after two ancestral steps of size dt / 2 from the per-token times t (B, L) (see the module docstring)."""
    schedule = MaskSchedule(process.mask_schedule, process.eps)
    masked = zt == mask_id  # (B, L)
    index = torch.full(zt.shape, -1, dtype=torch.long, device=zt.device)
    index[masked] = torch.arange(int(masked.sum()), device=zt.device)  # row of each masked position in the targets
    targets = None
    z = zt
    for i in range(2):
        still = z == mask_id  # (B, L)
        logp = log_probs(teacher, z, x0, still, process, mask_id, schedule)  # (M, V)
        if targets is None:
            targets = torch.empty_like(logp)
        u_now, u_next = t - i * dt / 2, (t - (i + 1) * dt / 2).clamp_min(0.0)  # (B, L)
        chance = schedule.reveal_fraction(u_now, u_next)[still]  # (M,)
        draw = torch.rand(chance.shape, generator=generator, device=generator.device).to(z.device)
        reveal = draw < chance  # (M,)
        settled = reveal if i == 0 else torch.ones_like(reveal)  # after the last step every target is set
        targets[index[still][settled]] = logp[settled]
        tokens = gumbel_draw(logp, generator)  # (M,)
        z = z.clone()
        z[still] = torch.where(reveal, tokens, torch.full_like(tokens, mask_id))
    return targets


def kl_to_student(targets: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(target || student) (N,) of log-distributions (N, V); tokens the target excludes (probability 0) add 0."""
    p = targets.exp()
    return (p * torch.where(p > 0, targets - student_logp, torch.zeros_like(p))).sum(-1)


def sdtt_loss(student, teacher, x0: torch.Tensor, process: ProcessConfig, mask_id: int, steps: int,
              generator: torch.Generator) -> LossOutput:
    """The SDTT loss of `student` (decoding in `steps` steps) against `teacher` (2 x `steps`) on x0 (B, L)."""
    schedule = MaskSchedule(process.mask_schedule, process.eps)
    t = block_times(x0, process, steps, generator)  # (B, L)
    zt, masked = corrupt(x0, t, schedule, mask_id, generator)  # (B, L) each
    targets = teacher_targets(teacher, zt, x0, t, 1.0 / steps, process, mask_id, generator)  # (N, V)
    student_logp = log_probs(student, zt, x0, masked, process, mask_id, schedule)  # (N, V)
    kl = kl_to_student(targets, student_logp)  # (N,)
    n = int(masked.sum())
    loss = kl.sum() / max(n, 1)
    nll = -student_logp.gather(1, x0[masked][:, None]).squeeze(1)  # (N,) for the diagnostics
    return LossOutput(loss=loss, masked_tokens=n, nll_sum=nll.sum().detach())
