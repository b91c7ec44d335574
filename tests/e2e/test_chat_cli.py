"""`turbolm chat` driven through a pseudo-terminal as a person types, and its multi-round KV reuse
checked against one-shot generation with the real engine."""
import io

import pexpect
import pytest

from e2e_servers import turbolm_cmd


def _spawn(ws, *flags):
    cmd = turbolm_cmd("chat", ws, *flags)
    return pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", timeout=180, dimensions=(50, 400))


@pytest.fixture(scope="module")
def engine(tiny_ws):
    from turbolm import turbomind as tm

    return tm.TurboMind.from_pretrained(tiny_ws)


def _greedy(engine, ids, n, session_id=901, ignore_eos=True):
    inst = engine.create_instance()
    for outs in inst.stream_infer(session_id, ids, request_output_len=n, top_k=1, ignore_eos=ignore_eos):
        pass
    inst.end(session_id)
    return list(outs[0][0])


def _answer(child) -> str:
    child.expect("assistant: ")
    child.expect(r"\r\n\r\nuser >>> ")
    return child.before.replace("\r\n", "\n")


def test_chat_streams_rounds_end_and_exit(tiny_ws, engine):
    child = _spawn(tiny_ws, "--temperature", "0", "--top_k", "1", "--max_new_tokens", "16")
    try:
        child.expect("user >>> ")
        child.sendline("First Citizen:")
        first = _answer(child)
        # what a one-shot greedy request decodes to (no split UTF-8 character on the way)
        want = engine.tokenizer.decode(_greedy(engine, engine.tokenizer.encode("First Citizen:"), 16,
                                                  ignore_eos=False))
        assert first == want or (first == want.rstrip("\n") and len(want) - len(first) <= 1)
        child.sendline("Second:")
        second = _answer(child)
        child.sendline("end")
        child.expect(r"session reset")
        child.expect("user >>> ")
        child.sendline("First Citizen:")
        assert _answer(child) == first  # a reset session starts from nothing again
        assert second.strip(), "the second round produced no answer"
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_multi_round_reuses_the_cache_exactly(engine):
    """Round 2 continues the KV cache (sequence_start=False, step): its answer equals one-shot
    generation over round 1's prompt + answer + round 2's prompt."""
    from turbolm.chat import ChatSession

    chat = ChatSession(engine, session_id=902, top_k=1, ignore_eos=True)
    chat.ask("First Citizen:", 8, out=io.StringIO())
    history = chat.step
    out = io.StringIO()
    chat.ask("Speak, speak.", 8, out=out)
    tok = engine.tokenizer
    round1 = tok.encode(engine.model.get_prompt("First Citizen:", True))
    answer1 = _greedy(engine, round1, 8, session_id=903)
    assert len(round1) + len(answer1) == history
    round2 = tok.encode(engine.model.get_prompt("Speak, speak.", False), add_bos=False)
    want = tok.decode(_greedy(engine, round1 + answer1 + round2, 8, session_id=904))
    assert out.getvalue().rstrip("\n") == want.rstrip("\n")
    chat.reset()


def test_chat_warns_before_the_session_length_is_exceeded(tiny_chat_ws):
    child = _spawn(tiny_chat_ws, "--max_new_tokens", "24", "--temperature", "0", "--top_k", "1")
    try:
        child.expect("user >>> ")
        warned = False
        for i in range(6):
            child.sendline(f"round {i}")
            idx = child.expect([r"WARNING[^\r\n]*", "user >>> "])
            if idx == 0:
                warned = True
                break
        assert warned, "no warning within 6 rounds of a 64-token session"
        child.expect("user >>> ")
        child.sendline("end")
        child.expect("session reset")
        child.expect("user >>> ")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_chat_takes_an_hf_directory(tiny_hf):
    """An HF model folder is converted on the fly; the chat works the same."""
    child = _spawn(tiny_hf, "--max_new_tokens", "4")
    try:
        child.expect("user >>> ")
        child.sendline("hello")
        _answer(child)
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
