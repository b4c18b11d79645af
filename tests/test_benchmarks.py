"""``benchmarks/hotpath.py`` drives a connection with the server's own objects and inline stand-ins for the loop, the
pool and the transport: it must keep up with how those objects are built, or it measures nothing (or fails only
when someone needs it)."""

from __future__ import annotations

import pytest

from benchmarks import hotpath


@pytest.mark.parametrize("app", sorted(hotpath.REQUESTS))
def test_hotpath_serves_every_request_it_is_given_in_full(app: str) -> None:
    serve = hotpath.connection(app)
    first = serve(1)
    assert first > 0, "no response was written"
    assert serve(10) == 11 * first, "the responses to identical requests differ in size, or some were not written"
