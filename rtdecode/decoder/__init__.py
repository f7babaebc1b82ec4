"""Decoders: from a predicted embedding to gallery images and to a new image.

- retrieval.py  Retrieval (numpy only): nearest gallery images; the one rank rule.
- normalize.py  EmbeddingNormalizer and rescale_prediction: the one rescale.
- registry.py   decoder kinds by name -> "module:Class"; load_decoder.
- base.py       the ImageDecoder protocol, BaseDecoder and tensor helpers.
- tiny.py, pipelines.py  the decoders (torch, diffusers).
- testing.py    full-size decoders with random weights (tests and benchmarks).

Names load on first use, so ``import rtdecode.decoder`` loads no torch or diffusers.
"""

from __future__ import annotations

from rtdecode._utils.lazy import lazy_exports

_EXPORTS = {
    "Retrieval": "retrieval",
    "ranks_from_scores": "retrieval",
    "EmbeddingNormalizer": "normalize",
    "rescale_prediction": "normalize",
    "DECODERS": "registry",
    "load_decoder": "registry",
    "decoder_kind": "registry",
    "ImageDecoder": "base",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
