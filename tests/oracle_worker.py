"""Runs inside the oracle environment (tests/oracle.py): exec a snippet with the reference code importable."""

import sys
import warnings

import torch

reference, src, out = sys.argv[1:4]
sys.path.insert(0, reference)
warnings.filterwarnings("ignore")
job = torch.load(src, weights_only=False)
scope = dict(job["inputs"], torch=torch)
exec(compile(job["code"], "<oracle snippet>", "exec"), scope)
torch.save(scope["result"], out)
