"""AR -> diffusion adaptation (Open-dLLM design, ../shared/ALGORITHMS.md section 6).

A pretrained causal LM (a local Hugging Face folder or a Sunfish `--objective ar` run) gets a mask token,
bidirectional attention and one of two prediction layouts, and is fine-tuned with the masked NELBO through
Sunfish's trainer, optionally with LoRA, representation alignment against the frozen causal model and
trajectory-guided masking. Modules:

  tokenizer.py   a Hugging Face tokenizer behind Sunfish's tokenizer interface, with a mask token
  model.py       DiffusionLM: the flipped backbone behind Sunfish's hidden()/head() interface; loading (LoRA:
                 sunfish/lora.py)
  align.py       the alignment loss and the teacher-state cache (safetensors files keyed by input hashes)
  trajectory.py  commit orders from an entropy-ordered decoder; masking the latest-committed tokens
  objective.py   the training loss of an adapted model (masked NELBO + alignment)
  windows.py     fixed training windows visited in epochs (so cached states and trajectories recur)
  export.py      a Sunfish Transformer as an equivalent Hugging Face Llama / Qwen3 model
  run.py         `sunfish adapt`: corpus, run folder, the trainer; export to Hugging Face format
  cli.py         the command-line verbs
"""
