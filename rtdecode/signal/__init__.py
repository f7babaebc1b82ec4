"""Preprocessing shared by training and the live service (see docs/signal.md).

Importing this package is cheap (numpy and scipy.signal only).
"""

from rtdecode.signal.preprocess import MissingChannelsError, PreprocessConfig, Preprocessor

__all__ = ["MissingChannelsError", "PreprocessConfig", "Preprocessor"]
