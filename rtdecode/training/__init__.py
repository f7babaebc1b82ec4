"""Offline fitting and scoring: the brain encoder's training and its evaluation.

- encoder.py   ``rtdecode train``: recipes, the training loop, resume state.
- evaluate.py  ``rtdecode evaluate``: retrieval scores, a ridge baseline, plots.
- decoder.py   ``rtdecode train-decoder``: the tiny decoder's training; embedding fidelity.
- sweeps.py    ``rtdecode time-resolved``: one model per window position, as submitit jobs.
"""
