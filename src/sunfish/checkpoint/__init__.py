"""Checkpoints on disk: RUN_DIR/checkpoints/step-NNNNNN/ holding everything needed to resume or sample.

  files.py    the layout: finding, verifying (manifest.json) and reading config.json / state.json
  weights.py  model weights into a network of any parallel layout (full or FSDP-sharded files)
  export.py   `sunfish export`: one consolidated folder, in Sunfish's format, transformers' (`--format hf`, the
              classes of sunfish/hf.py) or LLaDA's (`--format llada`; hf_formats.py)

Writing checkpoints (and the optimizer and RNG state a resume needs) is training's business
(training/checkpoint.py); opening one for inference is the loader's (sunfish/loading.py).
"""
