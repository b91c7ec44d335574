"""The one config.ini schema: Python writes it, the C++ loader reads it; both agree on every key,
default and error."""
import os

import pytest

from turbolm import _turbomind
from turbolm.config import SCHEMA, ConfigError, read_config_ini, validate, write_config_ini

MINIMAL = dict(model_name="base", head_num=4, kv_head_num=2, vocab_size=100, num_layer=2, inter_size=32,
               rotary_embedding=16, size_per_head=16)


def _values_equal(key, py_value, cpp_text):
    if key.name.endswith("freq_factors"):  # float lists: the same numbers, either spelling
        return [float(v) for v in cpp_text.split(",") if v] == pytest.approx(
            [float(v) for v in py_value.split(",") if v], rel=1e-6)
    if key.type is float:
        return float(cpp_text) == pytest.approx(py_value, rel=1e-6)
    if key.type is int:
        return int(cpp_text) == py_value
    return cpp_text == py_value


def test_every_key_round_trips_through_the_cpp_loader(tmp_path):
    path = str(tmp_path / "config.ini")
    cfg = dict(MINIMAL, norm_eps=1e-5, rope_theta=100000.0, session_len=4096, weight_type="bf16", attn_bias=1,
               tensor_para_size=2, cache_max_entry_count=0.25, rope_scaling_factor=2.0, use_logn_attn=1,
               hidden_act="gelu_tanh", norm_offset=1.0, embedding_scale=8.5, post_norm=1, attn_scale=0.0625,
               attn_softcap=50.0, final_softcap=30.0, sliding_window=64, sliding_layers="10", rope_local_theta=1e4,
               rope_type="longrope", rope_freq_factors="1.0,1.5,2.0,2.5,3.0,3.5,4.0,4.5",
               rope_long_freq_factors="1.25,2.0,3.0,4.0,5.0,6.0,7.0,8.0", rope_attention_factor=1.19,
               embedding_type="int4", embedding_group_size=32, tie_word_embeddings=1)
    write_config_ini(path, cfg)
    py = read_config_ini(path)
    cpp = _turbomind.read_config(path)
    assert set(cpp) == {k.name for k in SCHEMA}, "C++ and Python key sets differ"
    for key in SCHEMA:
        assert _values_equal(key, py[key.name], cpp[key.name]), (key.name, py[key.name], cpp[key.name])


def test_defaults_agree(tmp_path):
    """A config with only the required keys: both sides fill the same defaults."""
    path = tmp_path / "config.ini"
    path.write_text("[llama]\n" + "".join(f"{k} = {v}\n" for k, v in MINIMAL.items()))
    py = read_config_ini(str(path))
    cpp = _turbomind.read_config(str(path))
    for key in SCHEMA:
        assert _values_equal(key, py[key.name], cpp[key.name]), (key.name, py[key.name], cpp[key.name])


@pytest.mark.parametrize("extra,needle", [
    ("session_len = abc\n", "'session_len' = 'abc'"),
    ("session_len = 2.5\n", "'session_len' = '2.5'"),
    ("weight_type = fp8\n", "weight_type 'fp8'"),
    ("act_type = fp8\n", "act_type 'fp8' is not one of float, int8, bf16"),
    ("act_type = int8\n", "act_type int8 needs weight_type int4 or int8, not fp16"),
    ("tensor_para_size = 4\n", "not divisible"),
    ("num_layer = 0\n", "'num_layer' must be positive"),
    ("hidden_act = relu\n", "hidden_act 'relu' is not one of silu, gelu_tanh"),
    ("sliding_layers = 101\n", "sliding_layers"),
    ("rope_type = su\n", "rope_type 'su' is not one of"),
    ("rope_freq_factors = 1,2,3\n", "rope_freq_factors"),
    ("rope_type = longrope\n", "longrope needs rope_freq_factors"),
    ("rope_type = yarn\n", "yarn needs rope_freq_factors"),
    ("int8_linears = 0.w2\n", "int8_linears needs weight_type int4"),
    ("embedding_type = int2\n", "embedding_type 'int2' is not one of float, int8, int4"),
    ("embedding_type = int8\n", "embedding_group_size 0 must be a positive multiple of 16 dividing hidden_units 64"),
    ("embedding_type = int4\nembedding_group_size = 48\n", "embedding_group_size 48 must be"),
])
def test_both_sides_reject_the_same_bad_values(tmp_path, extra, needle):
    path = tmp_path / "config.ini"
    body = "".join(f"{k} = {v}\n" for k, v in MINIMAL.items() if not extra.startswith(k + " "))
    path.write_text("[llama]\n" + body + extra)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        read_config_ini(str(path))
    with pytest.raises(RuntimeError, match=needle):
        _turbomind.read_config(str(path))


def test_missing_required_key_is_named(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text("[llama]\nmodel_name = base\n")
    with pytest.raises(ConfigError, match="missing required key 'head_num'"):
        read_config_ini(str(path))
    with pytest.raises(RuntimeError, match="missing required key 'head_num'"):
        _turbomind.read_config(str(path))


def test_validate_rejects_gqa_mismatch():
    with pytest.raises(ConfigError, match="not a multiple of kv_head_num"):
        validate(dict(MINIMAL, head_num=5))


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="turbolm convert"):
        read_config_ini(str(tmp_path / "nope.ini"))
    with pytest.raises(RuntimeError, match="turbolm convert"):
        _turbomind.read_config(str(tmp_path / "nope.ini"))
