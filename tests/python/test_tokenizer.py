"""turbolm.tokenizer on the two kinds of tokenizer we serve: the tiny models' sentencepiece BPE
(byte fallback, adds BOS) and SmolLM2's byte-level BPE (adds nothing)."""
import random

import pytest

from turbolm.tokenizer import Tokenizer

TEXTS = [
    "Hello world",
    "  two leading spaces, trailing space ",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.",
    "héllo wörld — naïve café",
    "你好，世界。日本語のテキスト",
    "emoji 🤖🚀 and 👩‍👩‍👧 family",
    "digits 1234567890 and tabs\tand\r\nnewlines",
]


@pytest.fixture(scope="module")
def sp_tok(tiny_model):
    return Tokenizer(tiny_model("gqa"))


@pytest.fixture(scope="module")
def smol_tok(smollm2_hf):
    return Tokenizer(smollm2_hf)


@pytest.fixture(params=["sp", "smol"])
def tok(request):
    return request.getfixturevalue(f"{request.param}_tok")


def test_facts(sp_tok, smol_tok):
    assert (sp_tok.vocab_size, sp_tok.bos_token_id, sp_tok.eos_token_id) == (1001, 1, 2)
    assert (smol_tok.vocab_size, smol_tok.eos_token_id) == (49152, 2)
    assert smol_tok.chat_template and "im_start" in smol_tok.chat_template


def test_encode_adds_one_bos(sp_tok, smol_tok):
    ids = sp_tok.encode("Hello world")
    assert ids[0] == 1 and ids[1] != 1
    assert sp_tok.encode("Hello world", add_bos=False) == ids[1:]
    # a rendered template that starts with `<s>` gets no second BOS
    templated = sp_tok.encode("<s>[INST] Hello [/INST]")
    assert templated[0] == 1 and templated[1] != 1
    # SmolLM2's tokenizer adds nothing; its `<|im_start|>` (id 1, its "bos") is kept once
    assert smol_tok.encode("Hello") == smol_tok.encode("Hello", add_bos=False)
    assert smol_tok.encode("<|im_start|>user")[:2] == [1, smol_tok.encode("user", add_bos=False)[0]]


@pytest.mark.parametrize("text", TEXTS)
def test_decode_roundtrip(tok, text):
    # sentencepiece's dummy prefix swallows one leading space
    assert tok.decode(tok.encode(text, add_bos=False)) in (text, text[1:] if text.startswith(" ") else text)


def _stream(tok, ids, chunk=1):
    d = tok.detokenizer()
    pieces = [d.step(ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
    pieces.append(d.flush())
    return pieces


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("chunk", [1, 3])
def test_incremental_detokenizer_concatenates_to_decode(tok, text, chunk):
    ids = tok.encode(text, add_bos=False)
    pieces = _stream(tok, ids, chunk)
    assert "".join(pieces) == tok.decode(ids)
    for p in pieces:  # never a split UTF-8 character: no replacement char in any piece
        assert "\ufffd" not in p


def test_incremental_detokenizer_on_random_ids(tok):
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(tok.vocab_size) for _ in range(25)]
        assert "".join(_stream(tok, ids)) == tok.decode(ids)


def test_incremental_detokenizer_skips_special_tokens(smol_tok):
    ids = smol_tok.encode("<|im_start|>assistant\nHi there<|im_end|>", add_bos=False)
    assert "".join(_stream(smol_tok, ids)) == "assistant\nHi there"


def test_stop_words_to_ids(sp_tok, smol_tok):
    assert smol_tok.stop_words_to_ids(["<|im_end|>"]) == [[2]]
    assert sp_tok.stop_words_to_ids(["</s>", "", "</s>"]) == [[2]]
    # sentencepiece encodes "Citizen" as "▁Citizen": matching it would also cut the space before
    # the word, so it is left to the text side
    assert sp_tok.stop_words_to_ids(["Citizen"]) == []
    # a multi-token stop string is one whole sequence that decodes to exactly the string
    for w in ["Hello world", "world", " world"]:
        (seq,) = smol_tok.stop_words_to_ids([w])
        assert smol_tok.decode(seq) == w
    assert len(smol_tok.stop_words_to_ids(["Hello world"])[0]) >= 2


def test_missing_folder_is_a_user_error(tmp_path):
    from turbolm.errors import UserError

    with pytest.raises(UserError):
        Tokenizer(str(tmp_path / "nope"))
