"""Decoders: from a predicted embedding to gallery images and to a new image.

``rtdecode.decoder.retrieval`` (numpy only) finds the nearest gallery images;
``rtdecode.decoder.base`` generates an image. This package file imports neither, so
``import rtdecode.decoder`` loads no torch or diffusers.
"""
