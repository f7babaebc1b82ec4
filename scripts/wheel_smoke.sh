#!/usr/bin/env bash
# The wheel runs anywhere: build it, install it into a new virtualenv in a temporary
# folder, run `rtdecode demo` from another folder, and check that /health answers 200 and
# that a websocket client receives decoded frames. Exits non-zero on any failure.
#
#   bash scripts/wheel_smoke.sh [WHEEL]     # builds the wheel into the temporary folder if no WHEEL
#
# Environment: PYTHON (the interpreter the venv is made from, default python3),
# BUILD_PYTHON (one with the `build` package, default the checkout's .venv: make install),
# SMOKE_DEADLINE_S (how long the demo may take to simulate its subject and become ready,
# default 1200), SMOKE_KEEP=1 keeps the temporary folder. torch comes from pip's usual
# sources (find-links such as /opt/wheels work offline). The demo's subject is simulated
# into the per-user data folder, here XDG_DATA_HOME inside the temporary folder.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# Loopback-only LSL for everything this script starts (no multicast off the machine).
export LSLAPICFG="$repo/rtdecode/lsl/lsl_local.cfg"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MNE_DONTWRITE_HOME=true HF_HUB_OFFLINE=1
PYTHON="${PYTHON:-python3}"
BUILD_PYTHON="${BUILD_PYTHON:-$repo/.venv/bin/python}"
deadline_s="${SMOKE_DEADLINE_S:-1200}"

tmp="$(mktemp -d -t rtdecode-wheel-smoke-XXXXXX)"
demo_pid=""
cleanup() {
    if [[ -n "$demo_pid" ]] && kill -0 "$demo_pid" 2>/dev/null; then
        kill -TERM "$demo_pid" 2>/dev/null || true
        wait "$demo_pid" 2>/dev/null || true
    fi
    if [[ "${SMOKE_KEEP:-0}" == 1 ]]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
t0=$SECONDS
step() { printf '[wheel-smoke %4ds] %s\n' "$((SECONDS - t0))" "$*"; }

wheel="${1:-}"
if [[ -z "$wheel" ]]; then
    step "building the wheel and the sdist"
    "$BUILD_PYTHON" -m build --outdir "$tmp/dist" "$repo" >"$tmp/build.log" 2>&1 || {
        tail -40 "$tmp/build.log"; exit 1; }
    wheel="$(ls "$tmp"/dist/rtdecode-*.whl)"
fi
wheel="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"

step "new virtualenv in $tmp/venv"
"$PYTHON" -m venv "$tmp/venv"
venv_py="$tmp/venv/bin/python"
"$venv_py" -m pip install -q --upgrade pip >/dev/null
# torch first: the project's pin, from a local wheel where pip's configuration has one.
"$venv_py" -m pip install -q torch==2.13.0
step "installing $(basename "$wheel")"
"$venv_py" -m pip install -q "$wheel"
step "installed"

# Run from a folder that is not the checkout, with a home of its own for user data.
work="$tmp/elsewhere"
mkdir -p "$work"
export XDG_DATA_HOME="$tmp/xdg"
unset RTDECODE_DATA RTDECODE_DEMO_DATA RTDECODE_DEMO_MODELS
log="$tmp/demo.log"
step "rtdecode --lsl-local demo --no-browser --port 0 (from $work)"
(cd "$work" && exec "$tmp/venv/bin/rtdecode" --lsl-local demo --no-browser --port 0) >"$log" 2>&1 &
demo_pid=$!

# Poll for the URL the demo prints once the service is ready (it simulates first).
url=""
end=$((SECONDS + deadline_s))
while [[ -z "$url" ]]; do
    if ! kill -0 "$demo_pid" 2>/dev/null; then
        echo "rtdecode demo exited before it was ready:"; tail -40 "$log"; exit 1
    fi
    if ((SECONDS > end)); then
        echo "rtdecode demo was not ready within ${deadline_s} s:"; tail -40 "$log"; exit 1
    fi
    url="$(grep -oE 'http://127\.0\.0\.1:[0-9]+/' "$log" | head -1 || true)"
    [[ -n "$url" ]] || sleep 1
done
step "demo ready at $url"

# /health until 200, then frames over the websocket, with the installed package's codec.
# (from $work too: python puts the current folder first on sys.path)
(cd "$work" && "$venv_py" - "$url" "$XDG_DATA_HOME") <<'PY'
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

import rtdecode
from rtdecode.server.protocol import decode_frame

url, data_home = sys.argv[1], Path(sys.argv[2])
assert "site-packages" in rtdecode.__file__, f"rtdecode imported from {rtdecode.__file__}"
deadline = time.monotonic() + 120
while True:
    try:
        with urllib.request.urlopen(url + "health", timeout=5) as r:
            if r.status == 200:
                break
    except urllib.error.HTTPError as exc:
        if time.monotonic() > deadline:
            raise SystemExit(f"/health still answers {exc.code}: {exc.read()[:300]!r}")
    time.sleep(0.2)
print("/health 200")
replay = data_home / "rtdecode" / "sim" / "replay_raw.fif"
assert replay.is_file(), f"the demo did not simulate into the per-user folder ({replay})"
seqs, n_images = [], 0
with connect(url.replace("http://", "ws://") + "ws", open_timeout=10) as ws:
    end = time.monotonic() + 60
    while len(seqs) < 20:
        if time.monotonic() > end:
            raise SystemExit(f"only {len(seqs)} frames arrived in 60 s")
        message = ws.recv(timeout=30)
        if isinstance(message, bytes):
            header, image = decode_frame(message)
            assert header["topk"], header
            seqs.append(header["seq"])
            n_images += bool(image)
assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
print(f"{len(seqs)} frames arrived (seq {seqs[0]}..{seqs[-1]}, {n_images} with an image)")
PY

kill -TERM "$demo_pid"
status=0
wait "$demo_pid" || status=$?
demo_pid=""
if [[ "$status" != 0 ]]; then
    echo "rtdecode demo exited with status $status after SIGTERM:"; tail -20 "$log"; exit 1
fi
step "wheel smoke test passed"
