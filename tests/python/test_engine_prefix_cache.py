"""Automatic prefix caching on the real engine and model: a request whose prompt starts like an
earlier one's reuses its full KV blocks and computes only the rest, and its tokens and logprobs
are IDENTICAL to an engine without the cache (the GEMMs are batch-invariant, so recomputing and
reusing give the same bits); also for two sessions that share a prefix and then diverge, under a
pool too small to keep everything (eviction), and at tp=2."""
import os
import shutil
import threading

import pytest

from turbolm import turbomind as tm
from turbolm.config import read_config_ini, write_config_ini

from engine_oracle import text_prompts, workspace

N_NEW = 12


def engines(hf_dir, tmp_path, tp=1, **kw):
    """(cached, uncached): the same workspace with enable_prefix_caching 1 and 0, block_len 16."""
    wdir = workspace(hf_dir, tp=tp, block_len=16)
    off = str(tmp_path / f"nocache_tp{tp}")
    shutil.copytree(os.path.dirname(os.path.dirname(wdir)), off)
    off_w = os.path.join(off, "triton_models", "weights")
    cfg = read_config_ini(os.path.join(off_w, "config.ini"))
    cfg["enable_prefix_caching"] = 0
    write_config_ini(os.path.join(off_w, "config.ini"), cfg)
    return tm.TurboMind(wdir, tp=tp, **kw), tm.TurboMind(off_w, tp=tp, **kw)


def run(model, sid, ids, start=True, end=True, n=N_NEW):
    out = None
    for o in model.create_instance().stream_infer(sid, [ids], request_output_len=n, sequence_start=start,
                                                  sequence_end=end, top_k=1, ignore_eos=True, logprobs=True,
                                                  top_logprobs=3):
        out = o[0]
    return out


def same(a, b, tol=0.0):
    assert a[0] == b[0]
    if tol == 0:
        assert a.logprobs == b.logprobs and a.top_logprobs == b.top_logprobs  # bit-identical
    else:
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= tol


@pytest.mark.parametrize("tp", [1, 2])
def test_reused_prefix_gives_identical_tokens_and_logprobs(tiny_model, tmp_path, tp):
    hf_dir = tiny_model("soft")
    cached, plain = engines(hf_dir, tmp_path, tp=tp)
    base = text_prompts(hf_dir, lengths=(130,))[0]
    prompts = [base + tail for tail in ([5, 6, 7], [9], [11, 12], [5, 6, 8])]
    first = run(cached, 1, prompts[0])
    assert first.cached_tokens == 0
    for i, p in enumerate(prompts):
        got = run(cached, 10 + i, p)
        assert got.cached_tokens == 128  # 8 full blocks of 16 of the shared 130 tokens
        same(got, run(plain, 10 + i, p))
    assert cached.stats()["prefix_cached_tokens"] >= 4 * 128
    assert plain.stats()["prefix_cached_tokens"] == 0


def test_sessions_sharing_a_prefix_then_diverging(tiny_model, tmp_path):
    hf_dir = tiny_model("soft")
    cached, plain = engines(hf_dir, tmp_path)
    system = text_prompts(hf_dir, lengths=(70,))[0]
    rounds = [[[3, 4], [8]], [[5, 6, 7], [9, 10]]]  # session -> its inputs per round
    outs = {}
    for model, name in ((cached, "cached"), (plain, "plain")):
        got = []
        for s, inputs in enumerate(rounds):
            got.append(run(model, 50 + s, system + inputs[0], end=False))
        for s, inputs in enumerate(rounds):  # second round of each session, continuing its history
            got.append(run(model, 50 + s, inputs[1], start=False, end=True))
        outs[name] = got
    for a, b in zip(outs["cached"], outs["plain"]):
        same(a, b)
    assert outs["cached"][1].cached_tokens == 64  # session 1 reused session 0's 4 full system blocks


def test_eviction_under_a_tiny_pool(tiny_model, tmp_path):
    """20 blocks for 8 concurrent prompts of 40-100 tokens that share 32 tokens: blocks are
    shared, pooled, evicted and preempted, and every output equals the uncached engine's. Tokens
    are equal; logprobs to 1e-5, not to the bit: the two engines preempt different sequences, and
    a preempted sequence recomputes its generated tokens in a prefill chunk, whose attention sums
    in another order than the decode step's (prefix caching itself is exact: the tests above)."""
    hf_dir = tiny_model("soft")
    cached, plain = engines(hf_dir, tmp_path, cache_max_entry_count=20, session_len=160)
    shared = text_prompts(hf_dir, lengths=(32,))[0]
    others = text_prompts(hf_dir, lengths=(8, 20, 40, 60, 12, 30, 50, 68))
    prompts = [shared + o for o in others]
    res = {}

    def go(model, key, i, start):
        start.wait()  # all 8 submit together: started one by one on a busy machine, the first ones
        res[key, i] = run(model, 100 + i, prompts[i], n=24)  # could finish before the last arrive

    for model, key in ((cached, "c"), (plain, "p")):
        start = threading.Barrier(len(prompts))
        threads = [threading.Thread(target=go, args=(model, key, i, start)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert cached.stats()["preemptions"] > 0 and cached.stats()["prefix_cached_tokens"] > 0
    for i in range(len(prompts)):
        same(res["c", i], res["p", i], tol=1e-5)
    # afterwards, alone: the shared prefix is still findable (or was evicted and recomputed)
    same(run(cached, 200, prompts[3], n=24), run(plain, 200, prompts[3], n=24))
    st = cached.stats()
    assert st["free_blocks"] + st["pooled_blocks"] == st["num_blocks"]
