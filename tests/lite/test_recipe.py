"""The README's `turbolm lite` recipe, run as written (the real command, in subprocesses) on a tiny
GGUF instead of SmolLM2: export_hf -> calibrate -> auto_awq (no --calib_dataset: it reuses the set
calibrate recorded) -> convert -> kv_qparams (which switches the workspace to quant_policy = 4),
and the result loads and generates. Plus the record's rules, in-process."""
import json
import os
import subprocess

import pytest

from tests.e2e.e2e_servers import turbolm_cmd
from turbolm.config import read_config_ini
from turbolm.errors import UserError
from turbolm.lite.auto_awq import calib_settings
from turbolm.lite.calib_data import save_record


def turbolm(*args):
    proc = subprocess.run(turbolm_cmd(*map(str, args)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory):
    """The tiny gqa model as a llama.cpp GGUF (no tokenizer inside: export_hf takes --tokenizer_path)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.converter.test_convert_gguf_tiny import write_gguf

    model = AutoModelForCausalLM.from_pretrained(tiny_model("gqa"), dtype=torch.float32)
    path = str(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    write_gguf(path, {k: v.numpy() for k, v in model.state_dict().items()}, model.config, set())
    return path


def test_readme_recipe(tiny_gguf, tiny_model, calib_txt, tmp_path):
    hf, wd, ws = tmp_path / "hf", tmp_path / "quant_output", tmp_path / "workspace-awq"
    turbolm("lite", "export_hf", tiny_gguf, "--dst_path", hf, "--tokenizer_path", tiny_model("gqa"))
    assert (hf / "config.json").is_file()

    turbolm("lite", "calibrate", "--model", hf, "--calib_dataset", calib_txt, "--calib_samples", 2,
            "--calib_seqlen", 32, "--work_dir", wd)
    record = {"calib_dataset": os.path.abspath(calib_txt), "calib_samples": 2, "calib_seqlen": 32}
    assert json.loads((wd / "calib_meta.json").read_text()) == record

    out = turbolm("lite", "auto_awq", "--model", hf, "--w_bits", 4, "--w_group_size", 64, "--work_dir", wd,
                  "--search_clip", "False")
    assert f"calibrating on {record['calib_dataset']}, as recorded in" in out and "2 x 32 tokens" in out

    turbolm("convert", "llama2", wd, "--model-format", "awq", "--group-size", 64, "--dst_path", ws)
    ini = ws / "triton_models" / "weights" / "config.ini"
    assert read_config_ini(str(ini))["quant_policy"] == 0

    out = turbolm("lite", "kv_qparams", "--work_dir", wd, "--turbomind_dir", ws / "triton_models" / "weights",
                  "--kv_sym", "False", "--num_tp", 1)
    assert read_config_ini(str(ini))["quant_policy"] == 4 and "set quant_policy = 4 (was 0)" in out

    from turbolm import turbomind as tm

    model = tm.TurboMind.from_pretrained(str(ws))
    outs = list(model.create_instance().stream_infer(1, [[1, 5, 9]], request_output_len=4, top_k=1,
                                                     ignore_eos=True, sequence_end=True))
    assert outs[-1][0][1] == 4 and outs[-1][0].finish_reason == "length"


def test_auto_awq_without_a_set_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="pass --calib_dataset .* or run `turbolm lite calibrate"):
        calib_settings(str(tmp_path), None, None, None)


def test_the_record_fills_only_what_is_not_given(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("x")
    save_record(str(tmp_path), str(txt), 7, 48)
    assert calib_settings(str(tmp_path), None, None, None) == (str(txt), 7, 48)
    assert calib_settings(str(tmp_path), None, 3, None) == (str(txt), 3, 48)
    assert calib_settings(str(tmp_path), "other.txt", None, None) == ("other.txt", 128, 2048)  # another set


def test_a_broken_record_is_a_user_error(tmp_path):
    (tmp_path / "calib_meta.json").write_text("{not json")
    with pytest.raises(UserError, match="calib_meta.json"):
        calib_settings(str(tmp_path), None, None, None)
