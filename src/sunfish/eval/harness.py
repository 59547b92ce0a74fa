"""lm-evaluation-harness adapter: Sunfish checkpoints as the lm-eval model type "sunfish".

    from sunfish.eval.harness import SunfishLM        # registers "sunfish" with lm_eval
    lm_eval.simple_evaluate(model="sunfish", model_args="path=runs/micro,mc_samples=64", tasks=[...])
or `sunfish lm-eval RUN --tasks NAME[,NAME] [--include-path DIR]`.

- loglikelihood(context, continuation): for a causal model the exact log p(continuation | context);
  for a diffusion model minus the Monte Carlo NELBO of the continuation with the context kept clean
  (`mc_samples` draws, times stratified across draws), a lower bound on log p. `is_greedy`: the greedy
  prediction of every continuation token matches (causal: teacher-forced argmax; diffusion: argmax with
  the whole continuation masked, one step).
- loglikelihood_rolling(text): the same over [BOS] text in windows of the model's context.
- generate_until(context, {until, max_gen_toks, temperature}): the Sunfish sampler, cut at the first stop string.
"""

from __future__ import annotations

import torch


try:
    from lm_eval.api.model import LM as _Base
    from lm_eval.api.registry import register_model
except ImportError:  # lm_eval is optional (the `eval` extra)
    _Base, register_model = object, None


class HarnessUnavailable(ImportError):
    """lm_eval is not installed; the message is one sentence."""


def _registered(cls):
    return register_model("sunfish")(cls) if register_model is not None else cls


@_registered
class SunfishLM(_Base):
    """A Sunfish run or checkpoint folder as an lm-eval model."""

    def __init__(self, path: str, device: str = "auto", mc_samples: int = 32, seed: int = 0, max_gen_toks: int = 64,
                 steps: int = 0, **_ignored):
        if _Base is object:
            raise HarnessUnavailable("the lm-eval adapter needs the lm_eval package; pip install 'sunfish[eval]'")
        super().__init__()
        from sunfish.runtime import setup_runtime
        from sunfish.loading import load_model

        self.rt = setup_runtime(str(device))
        self.loaded = load_model(path, self.rt.device)
        self.mc_samples = int(mc_samples)
        self.seed = int(seed)
        self.max_gen_toks = int(max_gen_toks)
        self.steps = int(steps)  # denoising steps for generation; 0 = one per generated token

    # -- scoring ----------------------------------------------------------------------------------------

    @property
    def _causal(self) -> bool:
        return self.loaded.spec.causal

    def _pair_ids(self, context: str, continuation: str) -> tuple[list[int], int]:
        """[BOS] context continuation, cut from the left to the context window; returns (ids, continuation start)."""
        tok, limit = self.loaded.tokenizer, self.loaded.cfg.model.context
        ctx, cont = [tok.bos_id, *tok.encode(context)], tok.encode(continuation)
        if not cont:
            raise ValueError("an lm-eval request has an empty continuation; the task's target must hold text")
        cont = cont[-(limit - 1):]
        ctx = ctx[-(limit - len(cont)):]
        return ctx + cont, len(ctx)

    @torch.no_grad()
    def _score(self, ids: list[int], start: int) -> tuple[float, bool]:
        """(log-likelihood estimate of ids[start:] given ids[:start], greedy match)."""
        from sunfish.eval.likelihood import estimator_for

        model, process = self.loaded.model, self.loaded.cfg.process
        device = self.rt.device
        x = torch.tensor([ids], device=device)  # (1, L)
        scored = torch.zeros_like(x, dtype=torch.bool)
        scored[:, start:] = True
        estimator = estimator_for(process)
        n = 1 if estimator.exact else self.mc_samples
        generator = torch.Generator(device=device).manual_seed(self.seed)
        base = torch.rand(1, generator=generator, device=device).item()
        u = (base + torch.arange(n, device=device) / n) % 1.0  # (n,) stratified draws
        with self.rt.autocast():
            nats = estimator.nats(model, x.expand(n, -1), process, self.loaded.tokenizer.mask_id, u, generator,
                                  scored=scored.expand(n, -1))
        return -float(nats.mean()), self._greedy(x, start)

    def _greedy(self, x: torch.Tensor, start: int) -> bool:
        model, mask_id = self.loaded.model, self.loaded.tokenizer.mask_id
        if self._causal:
            pred = model(x[:, :-1]).argmax(-1)[:, start - 1:]
        elif not self.loaded.spec.infill:
            return False  # block diffusion: no single-pass greedy check
        else:
            canvas = x.clone()
            canvas[:, start:] = mask_id
            t = torch.ones(1, device=x.device)
            pred = model(canvas, t if model.needs_time else None).argmax(-1)[:, start:]
        return bool((pred == x[:, start:]).all())

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args
            out.append(self._score(*self._pair_ids(context, continuation)))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        tok, limit = self.loaded.tokenizer, self.loaded.cfg.model.context
        out = []
        for request in requests:
            ids = [tok.bos_id, *tok.encode(request.args[0])]
            total = 0.0
            for lo in range(0, max(1, len(ids) - 1), limit - 1):  # windows overlapping by one token
                window = ids[lo : lo + limit]
                if len(window) >= 2:
                    total += self._score(window, 1)[0]
            out.append(total)
        return out

    def generate_until(self, requests) -> list[str]:
        import dataclasses

        from sunfish.sample.text import generate

        out = []
        for i, request in enumerate(requests):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            room = self.loaded.cfg.model.context - 1 - len(self.loaded.tokenizer.encode(context))
            length = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), room)
            if length < 1:
                out.append("")
                continue
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            cfg = dataclasses.replace(self.loaded.cfg.sampler, length=length, temperature=temperature,
                                      steps=min(self.steps or length, length))
            text = generate(self.loaded, context, cfg, seed=self.seed + i).text[len(context):]
            cuts = [text.index(s) for s in until if s and s in text]
            out.append(text[: min(cuts)] if cuts else text)
        return out


def run_tasks(path: str, tasks: list[str], *, include_path: str | None = None, limit: float | None = None,
              mc_samples: int = 32, device: str = "auto", builtin: bool = True) -> dict:
    """Run lm-eval tasks on a checkpoint; returns lm-eval's per-task results. `builtin` False indexes only the
    tasks under `include_path` (much faster to start)."""
    if _Base is object:
        raise HarnessUnavailable("`sunfish lm-eval` needs the lm_eval package; pip install 'sunfish[eval]'")
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=builtin or not include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"lm-eval does not know the task(s) {', '.join(unknown)}; check the names or pass --include-path")
    model = SunfishLM(path, device=device, mc_samples=mc_samples)
    results = lm_eval.simple_evaluate(model=model, tasks=tasks, limit=limit, task_manager=manager)
    return results["results"]
