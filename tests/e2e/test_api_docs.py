"""/docs works offline (issue 9 item 8): headless Chromium with every non-loopback request
blocked renders the Swagger UI from the server's own files, listing the API's operations."""
import os

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_docs_page_and_assets_come_from_the_server(api_server):
    html = httpx.get(api_server.url + "/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in html and "cdn" not in html.lower()
    js = httpx.get(api_server.url + "/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)")
def test_docs_render_in_a_browser_with_no_network(api_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            blocked = []

            def only_loopback(route):
                if route.request.url.startswith(api_server.url):
                    return route.continue_()
                blocked.append(route.request.url)
                return route.abort()

            page.route("**/*", only_loopback)
            page.goto(api_server.url + "/docs", wait_until="load")
            page.wait_for_selector(".opblock", timeout=30_000)
            text = page.inner_text("body")
            assert "/v1/chat/completions" in text and "/v1/completions" in text
            assert not blocked, blocked
        finally:
            browser.close()
