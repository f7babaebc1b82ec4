"""rtdecode: real-time decoding of visual perception from a live MEG stream."""

__version__ = "0.1.0"
