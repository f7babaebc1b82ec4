"""Fuzz the HTTP API with Schemathesis: requests generated from the app's OpenAPI schema,
sent to a real uvicorn on 127.0.0.1 (port 0), with and without a token.

For every response it checks:

* no 5xx, and a response at all (no dropped connection, no server crash);
* the token: on a server with a token, the guarded routes (``/api/*``, ``/metrics``)
  answer 401 exactly when the request carries no right token (``?token=`` first, else
  ``Authorization: Bearer``), and ``/health`` never asks for it; on a server without a
  token, no 401 anywhere;
* the server still answers ``/health`` at the end.

The schema is FastAPI's own (``app.openapi()``; the service does not publish it), plus
the two ways to pass the token (``token`` query parameter, ``Authorization`` header)
declared on every route, so that they are fuzzed too. Each route is fuzzed in the
positive mode (values the schema allows) and the negative mode (values it does not).

Run it::

    .venv/bin/python bench/fuzz_api.py                  # >= 10,000 requests
    .venv/bin/python bench/fuzz_api.py --cases 200      # a quick look

Writes ``bench/results/fuzz_api.json`` and prints a table. ``tests/test_fuzz_api.py``
runs :func:`fuzz_api` with a small case count.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, format_table, machine_info, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("LSLAPICFG", str(ROOT / "rtdecode" / "lsl" / "lsl_local.cfg"))

TOKEN = "fuzz-s3cret"
GUARDED_PREFIXES = ("/api/", "/metrics")
N_IMAGES = 10
#: How each route is called: with generated token parameters (almost always wrong or
#: absent), with the right token in the query, and with it in the Authorization header.
AUTH_VARIANTS: dict[str, dict[str, Any]] = {
    "generated": {},
    "query": {"query": {"token": TOKEN}},
    "bearer": {"headers": {"Authorization": f"Bearer {TOKEN}"}},
}


class FuzzSource:
    """A FrameSource: ready, a small status, thumbnails for ``img_000`` ... ``img_009``."""

    def status(self) -> dict[str, Any]:
        return {"stream": {"name": "fuzz", "sfreq_hz": 1000.0}, "counters": {"windows": 1}}

    def health(self) -> tuple[str, list[str]]:
        return "ready", []

    def gallery_thumbnail(self, image_id: str) -> tuple[bytes, str] | None:
        known = {f"img_{i:03d}" for i in range(N_IMAGES)}
        return (b"\xff\xd8fake-jpeg\xff\xd9", "image/jpeg") if image_id in known else None


def fuzz_schema(app: Any) -> dict[str, Any]:
    """``app.openapi()`` with the token's query parameter and header on every route."""
    schema = copy.deepcopy(app.openapi())
    for methods in schema["paths"].values():
        for operation in methods.values():
            operation.setdefault("parameters", []).extend(
                [
                    {
                        "name": "token",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "Authorization",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ]
            )
    return schema


def token_expected(path: str, query: dict[str, Any] | None, headers: dict[str, Any] | None) -> bool:
    """Whether the request carries the right token, as the server reads it."""
    query = query or {}
    if "token" in query and query["token"] is not None:
        return str(query["token"]) == TOKEN
    auth = next((str(v) for k, v in (headers or {}).items() if k.lower() == "authorization"), "")
    scheme, _, value = auth.partition(" ")
    return scheme.lower() == "bearer" and value.strip() == TOKEN


def fuzz_api(
    n_cases: int,
    *,
    seed: int = 0,
    with_token: bool = True,
    modes: tuple[str, ...] = ("positive", "negative"),
) -> dict[str, Any]:
    """Fuzz a fresh server; ``n_cases`` generated requests at most per route, mode and
    token variant (:data:`AUTH_VARIANTS`).

    Returns
    -------
    dict
        ``requests`` (sent), ``client_errors`` (requests the HTTP client could not send),
        ``status`` ({code: count}), ``per_route`` ({"GET /path": {code: count}}),
        ``failures`` (list of {route, status, why, curl}: 5xx, no response, wrong token
        answer), ``alive_after`` (``/health`` answered 200 at the end), ``elapsed_s``.
    """
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hyp_seed
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    from rtdecode.config import Settings
    from rtdecode.server.app import create_app, run_server_in_thread

    app = create_app(Settings(token=TOKEN if with_token else None), FuzzSource())
    schema = schemathesis.openapi.from_dict(fuzz_schema(app))
    status: Counter[int] = Counter()
    per_route: dict[str, Counter[int]] = {}
    failures: list[dict[str, Any]] = []
    skipped: list[str] = []
    n_requests = n_client_errors = 0
    t0 = time.monotonic()
    with run_server_in_thread(app, "127.0.0.1", 0) as server, requests.Session() as session:
        base_url = f"http://127.0.0.1:{server.port}"

        def check(case: Any, route: str, guarded: bool) -> None:
            """Send one generated request and judge its answer."""
            nonlocal n_requests, n_client_errors
            try:
                response = case.call(base_url=base_url, session=session, timeout=10)
            except requests.exceptions.InvalidHeader:
                n_client_errors += 1  # refused by the client, never sent
                return
            except requests.exceptions.RequestException as exc:
                n_requests += 1
                failures.append({"route": route, "status": None, "why": f"no response: {exc!r}"})
                return
            n_requests += 1
            code = response.status_code
            status[code] += 1
            per_route[route][code] += 1
            why = None
            if code >= 500:
                why = "server error"
            elif with_token and guarded:
                authorised = token_expected(case.path, case.query, case.headers)
                if authorised and code == 401:
                    why = "right token refused"
                elif not authorised and code != 401:
                    # A path no route takes (e.g. an empty id) falls through to the
                    # viewer's static files: 404, and nothing behind the guard ran.
                    if code != 404 or "No gallery image" in response.text:
                        why = "served without the token"
            elif code == 401:
                why = "token asked where none is needed"
            if why is not None and len(failures) < 50:
                failures.append(
                    {"route": route, "status": code, "why": why, "curl": case.as_curl_command()}
                )

        def hypothesis_test(strategy: Any, route: str, guarded: bool) -> Any:
            @hyp_seed(seed)
            @settings(
                max_examples=n_cases,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def one(case: Any) -> None:
                check(case, route, guarded)

            return one

        for result in schema.get_all_operations():
            operation = result.ok()
            route = f"{operation.method.upper()} {operation.path}"
            per_route[route] = Counter()
            for mode, (variant, fixed) in itertools.product(modes, AUTH_VARIANTS.items()):
                strategy = operation.as_strategy(generation_mode=GenerationMode(mode), **fixed)
                try:
                    hypothesis_test(strategy, route, operation.path.startswith(GUARDED_PREFIXES))()
                except Unsatisfiable:
                    # Negative mode with every parameter fixed: nothing left to break.
                    skipped.append(f"{route} {mode} {variant}")
        alive = requests.get(base_url + "/health", timeout=10).status_code == 200
    return {
        "with_token": with_token,
        "cases_per_route_and_mode": n_cases,
        "modes": list(modes),
        "requests": n_requests,
        "client_errors": n_client_errors,
        "status": {str(k): v for k, v in sorted(status.items())},
        "per_route": {r: {str(k): v for k, v in sorted(c.items())} for r, c in per_route.items()},
        "combinations_without_cases": skipped,
        "n_5xx": sum(v for k, v in status.items() if k >= 500),
        "failures": failures,
        "alive_after": alive,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        type=int,
        default=260,
        help="generated requests per route, mode, token variant and server (40 combinations are satisfiable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "fuzz_api.json")
    args = parser.parse_args(argv)
    runs = [fuzz_api(args.cases, seed=args.seed, with_token=t) for t in (True, False)]
    total = sum(r["requests"] for r in runs)
    rows = [
        [
            "token" if r["with_token"] else "no token",
            r["requests"],
            r["n_5xx"],
            len(r["failures"]),
            ", ".join(f"{k}: {v}" for k, v in r["status"].items()),
            r["elapsed_s"],
        ]
        for r in runs
    ]
    print(format_table(["server", "requests", "5xx", "failures", "status codes", "s"], rows))
    print(f"{total} requests in all")
    write_json(
        args.out,
        {
            "machine": machine_info(),
            "command": " ".join(sys.argv),
            "total_requests": total,
            "runs": runs,
        },
    )
    ok = all(not r["failures"] and r["alive_after"] for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
