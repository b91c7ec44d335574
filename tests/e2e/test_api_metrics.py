"""GET /metrics (issue 9 item 8) on the real server, read with prometheus_client's own parser:
the counters move by exactly what the requests did, the histograms count each request, and the
gauges agree with /v1/stats."""
from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url):
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m, name, **labels):
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_the_requests_did(api_server):
    url = api_server.url
    before = scrape(url)
    usage = []
    for n in (5, 9):
        r = httpx.post(url + "/v1/completions", json={"prompt": "First Citizen:", "max_tokens": n, "ignore_eos": True})
        assert r.status_code == 200
        usage.append(r.json()["usage"])
    bad = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": -1})
    assert bad.status_code == 400
    after = scrape(url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("turbolm_generation_tokens_total") == sum(u["completion_tokens"] for u in usage)
    assert delta("turbolm_prompt_tokens_total") == sum(u["prompt_tokens"] for u in usage)
    assert delta("turbolm_http_requests_total", path="/v1/completions", status="200") == 2
    assert delta("turbolm_http_requests_total", path="/v1/completions", status="400") == 1
    assert delta("turbolm_time_to_first_token_seconds_count") == 2
    assert delta("turbolm_time_per_output_token_seconds_count") == sum(u["completion_tokens"] - 1 for u in usage)
    stats = httpx.get(url + "/v1/stats").json()
    assert value(after, "turbolm_kv_blocks", state="total") == stats["num_blocks"]
    assert value(after, "turbolm_kv_blocks", state="free") == stats["free_blocks"]
    assert value(after, "turbolm_num_requests_running") == 0


def test_unknown_paths_do_not_become_labels(api_server):
    httpx.get(api_server.url + "/no/such/path/12345")
    text = httpx.get(api_server.url + "/metrics").text
    assert "12345" not in text and 'path="other",status="404"' in text
