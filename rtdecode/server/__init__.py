"""The websocket server and the viewer: Broadcaster (broadcast.py), protocol v1
(protocol.py), FastAPI app and background runner (app.py), Prometheus metrics
(metrics.py), static viewer (static/).

Import-light on purpose: nothing is imported here, so ``import rtdecode.server`` costs
nothing; import ``rtdecode.server.app`` (FastAPI, uvicorn) where the server is needed.
The server never imports torch nor the worker: it receives ``contracts.Frame`` objects.
"""
