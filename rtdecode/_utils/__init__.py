"""Small helpers every layer may use: device names and lazy exports.

Nothing here imports torch, pylsl or another rtdecode package at import time.
"""
