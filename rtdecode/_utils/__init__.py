"""Small helpers every layer may use.

files, jsonable, paths, devices, lazy exports, progress, tables.

Nothing here imports torch, pylsl or another rtdecode package at import time.
"""
