"""`turbolm serve gradio` in headless Chromium (playwright with Debian's /usr/bin/chromium): a
message gets a streamed reply; tabs have their own sessions; Reset ends one; Stop cancels."""
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from e2e_servers import Server, wait_idle

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="needs Debian's chromium (apt-get install chromium)")

# records every length the last bot message goes through, so the test sees the reply grow
RECORD = """() => {
  window.__lens = [];
  const root = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = root.querySelectorAll('[data-testid="bot"]');
    if (bots.length) window.__lens.push(bots[bots.length - 1].innerText.length);
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _open(browser, url):
    page = browser.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_selector("#prompt textarea", timeout=60_000)
    return page


def _set(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _send(page, text):
    page.locator("#prompt textarea").fill(text)
    page.locator("#prompt textarea").press("Enter")


def _bot_count(page):
    return page.locator('#chatbot [data-testid="bot"]').count()


def _wait_reply(page, n_bots, timeout=60):
    """Wait until there are n_bots replies and the last one has stopped changing."""
    deadline, last, stable = time.time() + timeout, None, 0
    while time.time() < deadline:
        if _bot_count(page) >= n_bots:
            text = page.locator('#chatbot [data-testid="bot"]').nth(n_bots - 1).inner_text()
            stable = stable + 1 if text == last and text else 0
            last = text
            if stable >= 8:
                return text
        time.sleep(0.1)
    raise AssertionError(f"no settled reply #{n_bots} within {timeout}s (last: {last!r})")


def test_local_engine_page_streams_a_reply(browser, tiny_ws, tmp_path):
    srv = Server(["serve", "gradio", tiny_ws], str(tmp_path / "gradio.log"), ready_path="/")
    try:
        page = _open(browser, srv.url)
        _set(page, "temperature", 0)
        _set(page, "max_new", 400)
        page.evaluate(RECORD)
        _send(page, "First Citizen:")
        reply = _wait_reply(page, 1)
        assert reply.strip()
        grew = sorted(set(x for x in page.evaluate("window.__lens") if x > 0))
        assert len(grew) >= 2, f"the reply appeared at once, not streamed: {grew}"
        page.screenshot(path=str(tmp_path / "gradio.png"))
        # a second round continues the same session; Reset clears the page
        _send(page, "Second:")
        _wait_reply(page, 2)
        page.locator("#reset").click()
        page.wait_for_function("document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length == 0",
                               timeout=30_000)
    finally:
        srv.close()


def test_api_server_backed_page_has_a_session_per_tab(browser, api_server, tmp_path):
    srv = Server(["serve", "gradio", api_server.url], str(tmp_path / "gradio-remote.log"), ready_path="/")
    stats = lambda: httpx.get(api_server.url + "/v1/stats").json()  # noqa: E731
    try:
        wait_idle(api_server.url)
        before = stats()["interactive_sessions"]
        tab_a, tab_b = _open(browser, srv.url), _open(browser, srv.url)
        for page in (tab_a, tab_b):
            _set(page, "max_new", 8)
            _send(page, "hello")
            _wait_reply(page, 1)
        assert stats()["interactive_sessions"] == before + 2
        tab_a.locator("#reset").click()
        deadline = time.time() + 20
        while stats()["interactive_sessions"] != before + 1 and time.time() < deadline:
            time.sleep(0.1)
        assert stats()["interactive_sessions"] == before + 1
        # Stop cancels a long answer: it ends well before its 1000 tokens. The tiny model alone
        # would write them faster than a busy browser delivers the click, so 16 background rounds
        # of up to 1000 tokens share the batch with it (slowing it ~17x) for as long as it runs,
        # and their tokens are subtracted. They are stopped once tab B's answer is over (if Stop
        # does nothing, that is when they end on their own, before tab B's 1000 tokens are out).
        _set(tab_b, "max_new", 1000)
        generated = stats()["tokens_generated"]
        bg_ids = range(900_001, 900_017)
        interactive = api_server.url + "/v1/chat/interactive"

        def background(sid):
            r = httpx.post(interactive, timeout=300,
                           json={"session_id": sid, "prompt": "x", "request_output_len": 1000, "ignore_eos": True,
                                 "interactive_mode": False, "temperature": 0})
            assert r.status_code == 200, r.text
            return r.json()["tokens"]

        def wait_running(done, timeout):
            deadline = time.time() + timeout
            while not done(stats()["requests_running"]):
                if time.time() > deadline:
                    return False
                time.sleep(0.02)
            return True

        with ThreadPoolExecutor(16) as pool:
            load = [pool.submit(background, sid) for sid in bg_ids]
            assert wait_running(lambda n: n >= 16, 20)
            _send(tab_b, "go on")
            assert wait_running(lambda n: n > 16, 20), "tab B's answer never started"
            tab_b.locator("#stop").click(force=True)  # the page is busy re-rendering
            wait_running(lambda n: n <= 16, 120)
            for sid in bg_ids:  # 404: that round is over already (and its session with it)
                assert httpx.post(interactive, json={"session_id": sid, "stop": True}).status_code in (200, 404)
            bg_tokens = sum(f.result() for f in load)
        assert wait_running(lambda n: n == 0, 20)
        tab_b_tokens = stats()["tokens_generated"] - generated - bg_tokens
        assert tab_b_tokens < 1000, (tab_b_tokens, bg_tokens)
        tab_b.locator("#reset").click()
        deadline = time.time() + 20
        while stats()["interactive_sessions"] != before and time.time() < deadline:
            time.sleep(0.1)
        assert stats()["interactive_sessions"] == before
    finally:
        srv.close()
