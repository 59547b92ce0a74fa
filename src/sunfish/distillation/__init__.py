"""Step distillation of masked and block diffusion models (`sunfish distill`): sdtt.py (self-distillation through
time), trajectory.py (the teacher's greedy decodings with certainty forcing), run.py (rounds, teachers, the trainer)."""
