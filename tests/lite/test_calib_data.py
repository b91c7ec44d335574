"""Calibration samples from .txt / .jsonl files and the named sets (local HF datasets cache only)."""
import json

import pytest
import torch
from transformers import AutoTokenizer

from turbolm.errors import UserError
from turbolm.lite import calib_data
from turbolm.lite.calib_data import get_calib_data


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model("gqa"))


def test_txt_samples_shape_and_seed(tokenizer, calib_txt):
    a = get_calib_data(calib_txt, tokenizer, 3, 40)
    assert a.shape == (3, 40) and a.dtype == torch.int64
    assert torch.equal(a, get_calib_data(calib_txt, tokenizer, 3, 40))        # fixed seed
    assert not torch.equal(a, get_calib_data(calib_txt, tokenizer, 3, 40, seed=1))
    ids = calib_data.tokenize(tokenizer, open(calib_txt, encoding="utf-8").read())
    s = [i for i in range(len(ids) - 40) if ids[i:i + 40] == a[0].tolist()]
    assert s, "each sample is a window of the tokenized text"
    assert tokenizer.bos_token_id not in a[:, 0].tolist() or tokenizer.bos_token_id in ids


def test_jsonl(tokenizer, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": "To be, or not to be, that is the question. " * 8})
                              for _ in range(3)) + "\n", encoding="utf-8")
    assert get_calib_data(str(path), tokenizer, 2, 16).shape == (2, 16)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="text"):
        get_calib_data(str(bad), tokenizer, 1, 4)


def test_errors(tokenizer, tmp_path):
    with pytest.raises(UserError, match="not found"):
        get_calib_data(str(tmp_path / "nope.txt"), tokenizer, 1, 8)
    with pytest.raises(UserError, match="neither"):
        get_calib_data("mydata", tokenizer, 1, 8)
    short = tmp_path / "short.txt"
    short.write_text("hello world", encoding="utf-8")
    with pytest.raises(UserError, match="fewer than calib_seqlen"):
        get_calib_data(str(short), tokenizer, 1, 500)
    with pytest.raises(UserError, match="positive"):
        get_calib_data(str(short), tokenizer, 0, 8)


@pytest.mark.parametrize("name", sorted(calib_data.NAMED_SETS))
def test_named_set_absent_says_how(tokenizer, name, monkeypatch, tmp_path):
    # An empty HF cache: the named set is absent (or `datasets` is not installed); nothing is downloaded.
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    with pytest.raises(UserError) as e:
        get_calib_data(name, tokenizer, 1, 8)
    assert ".txt" in str(e.value) and "load_dataset" in str(e.value)
