"""Generative processes: forward (noising) processes, their training losses and likelihood estimators.

  schedules.py       alpha(t) of masked diffusion (MaskSchedule)
  masked.py          absorbing-state diffusion (MDLM / LLaDA): corruption, prompts, NELBO, one-sample likelihood
  block.py           block diffusion (BD3-LM)
  autoregressive.py  the causal baseline
  continuous.py      Gaussian diffusion over embeddings (Diffusion-LM, CDCD)
  flow.py            flow matching on the simplex
  time_warp.py       the learned noise-level warp of the continuous and flow processes
  layers.py          the layers continuous and flow models add to the backbone

Which process a config names, and what it can do, is the registry's business (sunfish/registry.py).
"""
