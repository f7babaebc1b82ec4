"""Schemathesis against the HTTP API, in the test suite: a bounded number of generated
requests per route (bench/fuzz_api.py runs >= 10,000), to a real uvicorn on 127.0.0.1,
with and without a token. No 5xx, every request answered, the token asked for exactly
where it should be, the server alive afterwards."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from fuzz_api import fuzz_api  # noqa: E402

N_CASES = 6


@pytest.mark.parametrize("with_token", [True, False], ids=["token", "no-token"])
def test_generated_requests_get_no_5xx_and_the_token_is_asked_where_it_should(with_token):
    result = fuzz_api(N_CASES, seed=1, with_token=with_token)
    assert result["failures"] == [] and result["n_5xx"] == 0
    assert result["alive_after"]
    routes = result["per_route"]
    assert set(routes) == {
        "GET /health",
        "GET /api/status",
        "GET /api/gallery/{image_id}",
        "GET /api/names",
        "GET /metrics",
    }
    assert result["requests"] >= 4 * N_CASES
    assert "401" not in routes["GET /health"]
    for route in ("GET /api/status", "GET /api/names", "GET /metrics"):
        assert ("401" in routes[route]) is with_token  # refused without the token...
        assert "200" in routes[route]  # ...and served with it
