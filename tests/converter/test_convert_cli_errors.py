"""Bad input to `turbolm convert` (a real subprocess): one clear line on stderr, exit code 2, and
nothing left behind -- no workspace, no temp dir."""
import json
import os
import shutil
import subprocess
import sys

import pytest

CLI = [sys.executable, "-c", "from turbolm.cli import main; main()", "convert"]


def run_convert(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def assert_clean_failure(proc, parent, before, needle):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("turbolm: error: "), proc.stderr
    assert needle in lines[0], lines[0]
    assert sorted(os.listdir(parent)) == before, "convert left files behind"


def _missing_path(model, tmp):
    return ["llama2", str(tmp / "no-such-model")], "does not exist"


def _truncated_safetensors(model, tmp):
    m = copy_model(model, tmp / "m")
    path = os.path.join(m, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return ["llama2", m], "truncated"


def _garbage_safetensors(model, tmp):
    m = copy_model(model, tmp / "m")
    with open(os.path.join(m, "model.safetensors"), "wb") as f:
        f.write(b"\xff" * 64)
    return ["llama2", m], "corrupt"


def _corrupt_pytorch_bin(model, tmp):
    m = copy_model(model, tmp / "m")
    os.remove(os.path.join(m, "model.safetensors"))
    with open(os.path.join(m, "pytorch_model.bin"), "wb") as f:
        f.write(b"PK\x03\x04 not really a zip")
    return ["llama2", m], "corrupt"


def _unknown_architecture(model, tmp):
    m = copy_model(model, tmp / "m")
    cfg_path = os.path.join(m, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    json.dump(cfg, open(cfg_path, "w"))
    return ["llama2", m], "GPTNeoXForCausalLM is not supported"


def _kv_heads_not_divisible(model, tmp):
    return ["llama2", model, "--tp", "3"], "kv_head_num"


def _missing_tokenizer(model, tmp):
    m = copy_model(model, tmp / "m")
    for name in ("tokenizer.model", "tokenizer.json"):
        os.remove(os.path.join(m, name))
    return ["llama2", m], "no tokenizer"


def _unknown_model_name(model, tmp):
    return ["no-such-template", model], "unknown model name"


def _unknown_weight_type(model, tmp):
    return ["llama2", model, "--weight_type", "fp8"], "not available"


def _garbage_gguf(model, tmp):
    p = tmp / "bad.gguf"
    p.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 10)
    return ["llama2", str(p)], "GGUF"


def _package_not_installed(model, tmp):
    return ["llama2", "pypi:no-such-package-xyz"], "not installed"


CASES = [_missing_path, _truncated_safetensors, _garbage_safetensors, _corrupt_pytorch_bin, _unknown_architecture,
         _kv_heads_not_divisible, _missing_tokenizer, _unknown_model_name, _unknown_weight_type, _garbage_gguf,
         _package_not_installed]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_bad_input_fails_cleanly(tiny_model, tmp_path, case):
    src = tmp_path / "src"
    src.mkdir()
    args, needle = case(tiny_model("gqa"), src)
    out = tmp_path / "out"
    out.mkdir()
    before = sorted(os.listdir(out))
    proc = run_convert(*args, "--dst_path", out / "ws", cwd=tmp_path)
    assert_clean_failure(proc, str(out), before, needle)


def test_nonempty_dst_is_refused_without_force(tiny_model, tmp_path):
    dst = tmp_path / "ws"
    dst.mkdir()
    (dst / "keep-me").write_text("precious")
    proc = run_convert("llama2", tiny_model("gqa"), "--dst_path", dst, cwd=tmp_path)
    assert_clean_failure(proc, str(tmp_path), ["ws"], "--force")
    assert os.listdir(dst) == ["keep-me"]


def test_nested_dst_parents_are_removed_on_failure(tiny_model, tmp_path):
    proc = run_convert("llama2", tiny_model("gqa"), "--tp", "3", "--dst_path", tmp_path / "a" / "b" / "ws",
                       cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "a").exists()


def test_success_via_cli(tiny_model, tmp_path):
    proc = run_convert("llama2", tiny_model("bias"), "--tp", "2", "--model-format", "hf", "--dst_path",
                       tmp_path / "ws", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
    assert (tmp_path / "ws" / "triton_models" / "weights" / "layers.1.attention.w_qkv.1.bias").is_file()
    assert sorted(os.listdir(tmp_path)) == ["ws"]
