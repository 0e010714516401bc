"""Observers of a run: what they predict (theory), which tensors the predictions hold for
(scale_invariance), and the per-log-point and per-validation measurements they record."""
