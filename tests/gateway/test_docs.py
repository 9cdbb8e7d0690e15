"""/docs and /redoc work offline: their JavaScript and CSS come from the replica, never from a CDN."""

from __future__ import annotations

import re

import pytest

from tests.support.gateway import Gateway


@pytest.mark.parametrize(("page", "assets"), [("/docs", 2), ("/redoc", 1)])
async def test_doc_pages_load_every_asset_from_the_replica(gw: Gateway, page: str, assets: int) -> None:
    html = await gw.http.get(page)
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    referenced = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text) + re.findall(
        r"""url: ['"]([^'"]+)['"]""", html.text
    )
    assert not [url for url in referenced if url.startswith(("http://", "https://", "//"))], referenced
    assert "cdn" not in html.text
    scripts = [url for url in referenced if url.endswith((".js", ".css"))]
    assert len(scripts) == assets, referenced
    for url in scripts:
        served = await gw.http.get(url)
        assert served.status_code == 200, url
        assert len(served.content) > 50_000, url  # the real bundle, not an error page
    assert (await gw.http.get("/openapi.json")).json()["info"]["title"] == "resource-router gateway"
