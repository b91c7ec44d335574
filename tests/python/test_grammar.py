"""turbolm.serve.grammar (structured output over llguidance) against independent oracles.

Random walks sample uniformly among the tokens each mask allows (temperature 1 over the allowed
set), biased toward ending so they terminate: EOS is taken with some probability once allowed, and
some steps pick only among allowed tokens holding a "closing" character. The decoded text is then
checked by an oracle that is not llguidance: json.loads + jsonschema, re.fullmatch, membership,
a small expression reducer. Each walk also checks the mask invariants at every step.

Tokenizers: SmolLM2's 49152-token byte-level BPE (the main one) and the tiny models' 1001-token
byte-fallback sentencepiece; both served with a model vocabulary padded past the tokenizer."""
import json
import re
import time

import jsonschema
import numpy as np
import pytest

from turbolm.serve.grammar import GrammarCompiler, GrammarError
from turbolm.tokenizer import Tokenizer

SEEDS = [0, 1, 2, 3]
PAD = 37  # model vocab = tokenizer + PAD: not a multiple of 32, so the last mask word is partial

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "city": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    },
    "required": ["name", "city", "age", "color", "tags"],
    "additionalProperties": False,
}


class Setup:
    def __init__(self, model_dir: str):
        self.tok = Tokenizer(model_dir)
        self.n_tok = len(self.tok.model)
        self.eos = self.tok.eos_token_id
        self.gc = GrammarCompiler(self.tok.model, vocab_size=self.n_tok + PAD, eos_id=self.eos)
        # each token's text (a lone byte-fallback piece <0x22> decodes to '"')
        self.pieces = self.tok.model.batch_decode([[i] for i in range(self.n_tok)])
        self.fill_s, self.fill_n = 0.0, 0

    def has_any(self, chars: str) -> np.ndarray:
        """[n_tok + PAD] bool: the token's piece holds one of chars."""
        out = np.zeros(self.n_tok + PAD, bool)
        out[: self.n_tok] = [any(c in p for c in chars) for p in self.pieces]
        return out

    def walk(self, spec, seed, closers="", p_eos=0.5, p_close=0.3, max_steps=600) -> str:
        """Sample until EOS; check the mask invariants each step; return the decoded text."""
        rng = np.random.default_rng(seed)
        m = self.gc.compile(spec)
        close = self.has_any(closers) if closers else None
        mask = np.zeros(self.gc.mask_words, np.uint32)
        ids = []
        for _ in range(max_steps):
            t0 = time.perf_counter()
            m.fill_mask(mask)
            self.fill_s += time.perf_counter() - t0
            self.fill_n += 1
            allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little"))
            assert allowed.size, "empty mask"
            assert allowed[-1] < self.n_tok, "a padding id (>= tokenizer size) is allowed"
            eos_ok = bool(np.any(allowed == self.eos))
            assert eos_ok == m.is_accepting(), "EOS allowed <=> accepting"
            if m.is_stopped():
                assert allowed.tolist() == [self.eos]
            others = allowed[allowed != self.eos]
            if eos_ok and (others.size == 0 or rng.random() < p_eos):
                m.consume(self.eos)
                return self.tok.decode(ids)
            pool = others
            if close is not None and rng.random() < p_close and close[others].any():
                pool = others[close[others]]
            t = int(rng.choice(pool))
            m.consume(t)
            ids.append(t)
        raise AssertionError(f"no EOS after {max_steps} steps: {self.tok.decode(ids)!r}")


@pytest.fixture(scope="module")
def smol(smollm2_hf):
    return Setup(smollm2_hf)


@pytest.fixture(scope="module")
def sp(tiny_model):
    return Setup(tiny_model("gqa"))


def _compact(text: str) -> None:
    """No whitespace outside strings (raw newlines can't be inside one): the chosen JSON form."""
    assert "\n" not in text and not text[:1].isspace() and not text[-1:].isspace(), repr(text)


# -- random walks against oracles --------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_json_schema_walk(smol, seed):
    spec = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    text = smol.walk(spec, seed, closers='"]}')
    _compact(text)
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("seed", SEEDS)
def test_json_object_walk(smol, seed):
    text = smol.walk({"type": "json_object"}, seed, closers='"]}', p_close=0.5)
    _compact(text)
    obj = json.loads(text)
    assert isinstance(obj, dict)


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_json_schema_walk_sentencepiece(sp, seed):
    spec = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    text = sp.walk(spec, seed, closers='"]}')
    jsonschema.validate(json.loads(text), SCHEMA)


REGEXES = [r"[a-z]{1,8}@[a-z]{1,8}\.(com|org|net)", r"-?[0-9]+(\.[0-9]{1,4})?", r"(ab|cd)*x"]


@pytest.mark.parametrize("regex", REGEXES)
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_regex_walk(smol, regex, seed):
    text = smol.walk({"type": "regex", "regex": regex}, seed, closers="x.")
    assert re.fullmatch(regex, text), (regex, text)


@pytest.mark.parametrize("seed", SEEDS)
def test_choice_walk(smol, seed):
    choice = ["yes", "no", "maybe so", "café ☕", 'say "hi"\n']
    text = smol.walk({"type": "choice", "choice": choice}, seed, p_eos=0.2)
    assert text in choice


def _reduce_expr(text: str) -> bool:
    """Oracle for EXPR_LARK: rewrite innermost (n+n) to 0 until a bare number is left."""
    inner = re.compile(r"\([0-9]{1,3}\+[0-9]{1,3}\)")
    while True:
        new = inner.sub("0", text)
        if new == text:
            return re.fullmatch(r"[0-9]{1,3}", text) is not None
        text = new


EXPR_LARK = 'start: expr\nexpr: NUM | "(" expr "+" expr ")"\nNUM: /[0-9]{1,3}/\n'


@pytest.mark.parametrize("seed", SEEDS)
def test_lark_walk(smol, seed):
    text = smol.walk({"type": "grammar", "grammar": EXPR_LARK}, seed, closers=")", p_close=0.6)
    assert _reduce_expr(text), text


def test_gbnf_walk(smol):
    gbnf = 'root ::= "id-" [0-9]+ ("," [0-9]+)*'
    for seed in SEEDS[:2]:
        text = smol.walk({"type": "grammar", "grammar": gbnf}, seed)
        assert re.fullmatch(r"id-[0-9]+(,[0-9]+)*", text), text


def test_fill_mask_timing(smol):
    """Not an assertion: the mean fill_mask cost per step for json_schema on this vocabulary."""
    smol.fill_s, smol.fill_n = 0.0, 0
    spec = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    for seed in range(10, 16):
        smol.walk(spec, seed, closers='"]}')
    print(f"\nfill_mask json_schema, vocab {smol.n_tok} (+{PAD} pad): "
          f"{1e3 * smol.fill_s / smol.fill_n:.3f} ms/step mean over {smol.fill_n} steps")


# -- mask properties -----------------------------------------------------------------------------

def test_mask_words_and_padding(smol, sp):
    assert smol.gc.mask_words == -(-(smol.n_tok + PAD) // 32)
    assert sp.gc.mask_words == -(-(1001 + PAD) // 32)
    exact = GrammarCompiler(smol.tok.model, vocab_size=smol.n_tok, eos_id=smol.eos)
    assert exact.mask_words == smol.n_tok // 32
    # "anything" allows every non-special token, yet never a padding id
    m = sp.gc.compile({"type": "regex", "regex": r"(?s:.*)"})
    mask = np.zeros(sp.gc.mask_words, np.uint32)
    m.fill_mask(mask)
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little")
    assert bits[: sp.n_tok].sum() > sp.n_tok // 2 and not bits[sp.n_tok:].any()
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        GrammarCompiler(smol.tok.model, vocab_size=smol.n_tok - 1, eos_id=smol.eos)


def test_fill_mask_rejects_wrong_buffer(smol):
    m = smol.gc.compile({"type": "json_object"})
    for bad in (np.zeros(smol.gc.mask_words, np.int64), np.zeros(smol.gc.mask_words + 1, np.uint32),
                np.zeros((2, smol.gc.mask_words), np.uint32)[:, 0]):
        with pytest.raises(ValueError):
            m.fill_mask(bad)


def test_custom_eos_id(smol):
    """The mask's end id is the engine's eos_id, not the tokenizer's."""
    other = 0 if smol.eos != 0 else 1
    gc = GrammarCompiler(smol.tok.model, vocab_size=smol.n_tok, eos_id=other)
    m = gc.compile({"type": "choice", "choice": ["yes"]})
    for t in smol.tok.encode("yes", add_bos=False):
        m.consume(t)
    assert m.is_accepting() and m.is_stopped()
    mask = np.zeros(gc.mask_words, np.uint32)
    m.fill_mask(mask)
    assert np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")).tolist() == [other]


def test_consume_disallowed_raises(smol):
    m = smol.gc.compile({"type": "regex", "regex": "[0-9]+"})
    mask = np.zeros(smol.gc.mask_words, np.uint32)
    m.fill_mask(mask)
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little")
    bad = smol.tok.encode("a", add_bos=False)[0]
    assert not bits[bad] and not bits[smol.eos]  # nothing typed yet: not accepting
    with pytest.raises(GrammarError, match="not allowed"):
        m.consume(smol.eos)
    # llguidance's error state is permanent: only EOS is offered, so the sequence ends
    assert m.error and m.is_stopped()
    m.fill_mask(mask)
    assert np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")).tolist() == [smol.eos]
    m2 = smol.gc.compile({"type": "regex", "regex": "[0-9]+"})
    with pytest.raises(GrammarError, match="not allowed"):
        m2.consume(bad)
    for out_of_range in (-1, smol.n_tok + PAD):
        with pytest.raises(GrammarError, match="outside the vocabulary"):
            smol.gc.compile({"type": "json_object"}).consume(out_of_range)
    with pytest.raises(GrammarError):  # a padding id is never allowed
        smol.gc.compile({"type": "regex", "regex": "(?s:.*)"}).consume(smol.n_tok)


# -- invalid specs -----------------------------------------------------------------------------

def _js(schema):
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


INVALID = [
    ({"type": "bogus"}, "unknown grammar type 'bogus'"),
    ({}, "unknown grammar type None"),
    ("json_object", "must be an object"),
    ({"type": "json_schema"}, "json_schema must be an object"),
    (_js([1, 2]), "must be a JSON object"),
    (_js("string"), "must be a JSON object"),
    (_js({"type": "foo"}), "Invalid type: foo"),
    (_js({"type": "object", "properties": 3}), "properties must be an object"),
    (_js({"$ref": "#/$defs/nope"}), "/$defs/nope"),
    (_js({"type": "string", "format": "weird"}), "Unknown format: weird"),
    ({"type": "regex", "regex": "(["}, "unclosed character class"),
    ({"type": "regex", "regex": 3}, "regex must be a string"),
    ({"type": "choice", "choice": []}, "non-empty list of strings"),
    ({"type": "choice", "choice": ["a", 1]}, "non-empty list of strings"),
    ({"type": "grammar", "grammar": "start: foo"}, 'unknown name: "foo"'),
    ({"type": "grammar", "grammar": 'root ::= ( "a"'}, "GBNF"),
    ({"type": "grammar", "grammar": ""}, "non-empty string"),
]


@pytest.mark.parametrize("spec,msg", INVALID, ids=[str(i) for i in range(len(INVALID))])
def test_invalid_spec(smol, spec, msg):
    with pytest.raises(GrammarError) as e:
        smol.gc.compile(spec)
    assert msg in str(e.value)
    assert isinstance(e.value, ValueError)


def test_pydantic_style_schema_compiles(smol):
    """What clients send: $defs/$ref, titles, descriptions, $schema."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "M", "type": "object",
              "$defs": {"Color": {"enum": ["red", "green"], "title": "Color", "type": "string"}},
              "properties": {"name": {"title": "Name", "type": "string", "description": "who", "maxLength": 8},
                             "c": {"$ref": "#/$defs/Color"}},
              "required": ["name", "c"], "additionalProperties": False}
    text = smol.walk(_js(schema), 7, closers='"}')
    jsonschema.validate(json.loads(text), schema)
