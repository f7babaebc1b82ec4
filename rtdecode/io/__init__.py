"""Files in and out of the live stream: XDF reading and writing (``rtdecode.io.xdf``).

Kept import-light on purpose: nothing is imported here, so ``import rtdecode.io`` loads
neither MNE, pyxdf nor torch. Import the submodule you need.
"""
