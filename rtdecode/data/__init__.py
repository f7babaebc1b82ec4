"""Offline data: recordings on disk (``recordings``), datasets and the simulated subject.

Kept import-light on purpose: nothing is imported here, so ``import rtdecode.data`` does
not load MNE. Import the submodule you need, e.g.
``from rtdecode.data.recordings import read_recording``.
"""
