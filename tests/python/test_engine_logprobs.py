"""Logprobs from the engine against HF transformers on the same weights: the chosen token's
logprob and its top-k alternatives are log-softmax of the RAW logits (whatever the sampling
settings), and prompt logprobs score every prompt token but the first -- also with
max_new_tokens=0, with a prompt split over several steps, and when the sequence is preempted and
recomputed."""
import threading

import pytest
import torch

from turbolm import turbomind as tm

from engine_oracle import hf_logprobs, text_prompts, workspace

ATOL = 2e-3  # nats: fp16 KV cache against HF's fp32 one (as test_engine_vs_hf.py)
K = 5


@pytest.fixture(scope="module")
def soft(tiny_model):
    hf_dir = tiny_model("soft")
    return hf_dir, tm.TurboMind(workspace(hf_dir, block_len=16), max_context_token_num=32)


def final(gen):
    out = None
    for outs in gen:
        out = outs[0]
    return out


def check_entry(lp_row, token, got_lp, got_top):
    """One position: HF's log-softmax row `lp_row` [vocab] against the engine's values."""
    assert abs(got_lp - float(lp_row[token])) < ATOL
    ref_vals, ref_ids = lp_row.topk(len(got_top))
    got_ids = [i for i, _ in got_top]
    got_vals = torch.tensor([v for _, v in got_top], dtype=torch.float64)
    assert float((got_vals - ref_vals).abs().max()) < ATOL
    # ids equal up to near-ties within the tolerance
    for gi, ri, rv in zip(got_ids, ref_ids.tolist(), ref_vals.tolist()):
        assert gi == ri or abs(float(lp_row[gi]) - rv) < ATOL


@pytest.mark.parametrize("settings", [dict(top_k=1), dict(top_k=0, top_p=0.9, temperature=1.7, repetition_penalty=1.3,
                                                            presence_penalty=1.0, logit_bias={7: 5.0})])
def test_generated_top_logprobs_are_raw_hf_log_softmax(soft, settings):
    hf_dir, model = soft
    prompt = text_prompts(hf_dir)[1]
    out = final(model.create_instance().stream_infer(
        1, [prompt], request_output_len=24, ignore_eos=True, sequence_end=True, random_seed=3, logprobs=True,
        top_logprobs=K, **settings))
    assert len(out.logprobs) == len(out.top_logprobs) == 24
    lp = hf_logprobs(hf_dir, prompt + out[0])[len(prompt) - 1:-1]
    for i, tok in enumerate(out[0]):
        assert len(out.top_logprobs[i]) == K
        check_entry(lp[i], tok, out.logprobs[i], out.top_logprobs[i])


def test_prompt_logprobs_match_hf_with_zero_new_tokens(soft):
    """max_new_tokens=0 with prompt logprobs: the prompt (130 tokens, four steps of the 32-token
    budget) is computed and scored, nothing generated."""
    hf_dir, model = soft
    prompt = text_prompts(hf_dir)[2]
    out = final(model.create_instance().stream_infer(2, [prompt], request_output_len=0, sequence_end=True,
                                                     prompt_logprobs=K))
    assert out[0] == [] and out.finish_reason == "length"
    lps, tops = out.prompt_logprobs
    assert len(lps) == len(tops) == len(prompt) - 1
    lp = hf_logprobs(hf_dir, prompt)
    for j in range(1, len(prompt)):
        check_entry(lp[j - 1], prompt[j], lps[j - 1], tops[j - 1])
    # the summed prompt logprob (what lm-eval's loglikelihood adds up) within 1e-3 per token
    ref_sum = float(lp[:-1].gather(1, torch.tensor(prompt[1:]).unsqueeze(1)).sum())
    assert abs(sum(lps) - ref_sum) < 1e-3 * (len(prompt) - 1)


def test_prompt_logprobs_without_alternatives_and_with_generation(soft):
    hf_dir, model = soft
    prompt = text_prompts(hf_dir)[1]
    out = final(model.create_instance().stream_infer(3, [prompt], request_output_len=4, top_k=1, ignore_eos=True,
                                                     sequence_end=True, prompt_logprobs=0))
    lps, tops = out.prompt_logprobs
    assert tops is None and len(lps) == len(prompt) - 1 and len(out[0]) == 4
    lp = hf_logprobs(hf_dir, prompt)
    ref = lp[:-1].gather(1, torch.tensor(prompt[1:]).unsqueeze(1)).squeeze(1)
    assert float((torch.tensor(lps, dtype=torch.float64) - ref).abs().max()) < ATOL


def test_prompt_logprobs_survive_preemption(tiny_model):
    """A pool of 12 blocks of 16 tokens for 4 sequences of 37 + 100 tokens: all four are admitted
    (3 blocks each), then growing sequences preempt each other and are recomputed; every prompt is
    still scored exactly once, equal to HF's."""
    hf_dir = tiny_model("soft")
    model = tm.TurboMind(workspace(hf_dir, block_len=16), cache_max_entry_count=12, session_len=192,
                         max_context_token_num=64)
    prompt = text_prompts(hf_dir)[1]
    prompts = [prompt[i:] + prompt[:i] for i in range(4)]
    outs = [None] * 4

    def go(i):
        outs[i] = final(model.create_instance().stream_infer(
            10 + i, [prompts[i]], request_output_len=100, top_k=1, ignore_eos=True, sequence_end=True,
            prompt_logprobs=2))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert model.stats()["preemptions"] > 0
    for p, out in zip(prompts, outs):
        assert out.finish_reason == "length"
        lps, tops = out.prompt_logprobs
        assert len(lps) == len(p) - 1
        lp = hf_logprobs(hf_dir, p)
        for j in range(1, len(p)):
            check_entry(lp[j - 1], p[j], lps[j - 1], tops[j - 1])


def test_logprob_settings_are_checked(soft):
    _, model = soft
    inst = model.create_instance()
    for kw, what in [(dict(logprobs=True, top_logprobs=21), "top_logprobs"), (dict(prompt_logprobs=21), "prompt_logprobs")]:
        out = final(inst.stream_infer(20, [[1, 2, 3]], request_output_len=2, sequence_end=True, **kw))
        assert out.finish_reason == "error" and what in out.error
    out = final(inst.stream_infer(21, [[1, 2, 3]], request_output_len=2, sequence_start=False, prompt_logprobs=1))
    assert out.finish_reason == "error" and "sequence_start" in out.error
