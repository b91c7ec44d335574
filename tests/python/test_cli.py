"""The `turbolm` command line, run as a user runs it (the installed command, in a subprocess):
unknown flags are refused and the closest valid flag is named, `--help` lists the real flags and
runs nothing, `-` and `_` spell the same flag, a workspace that does not load and a missing
optional package each end in one line `turbolm: error: ...` with exit code 2, and every
`turbolm ...` line of README.md parses."""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from tests.e2e.e2e_servers import free_port, turbolm_cmd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def turbolm(*args, env=None, timeout=60):
    return subprocess.run(turbolm_cmd(*map(str, args)), capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def assert_one_line_error(proc, *needles):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("turbolm: error: "), proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def ws(tiny_model, tmp_path_factory):
    from turbolm.converter.main import main as convert

    path = str(tmp_path_factory.mktemp("cli") / "ws")
    convert("base", tiny_model("gqa"), dst_path=path)
    return path


# ---- every command: its real flags (a few), and a typo of one of them -------------------------
# (command, flags --help must list, argv with a typo, the typo as reported, the flag suggested)
COMMANDS = [
    ((), ["--help"], ["--verbose"], "--verbose", "--help"),
    (("lite",), ["--help"], ["--quiet"], "--quiet", "--help"),
    (("lite", "export_hf"), ["--dst_path", "--tokenizer_path", "--force"], ["--dst_pth", "x"], "--dst_pth",
     "--dst_path"),
    (("lite", "calibrate"), ["--model", "--calib_dataset", "--calib_samples", "--calib_seqlen", "--work_dir",
                             "--device"], ["--modle", "m"], "--modle", "--model"),
    (("lite", "auto_awq"), ["--model", "--w_bits", "--w_group_size", "--work_dir", "--calib_dataset",
                            "--search_clip", "--search_tokens"], ["--model", "m", "--w_bit", "4"], "--w_bit",
     "--w_bits"),
    (("lite", "gptq"), ["--model", "--w_bits", "--w_group_size", "--work_dir", "--calib_dataset", "--damp_percent",
                        "--act_order", "--sym", "--true_sequential", "--mixed"], ["--model", "m", "--act-ordr"], "--act_ordr",
     "--act_order"),
    (("lite", "export_ct"), ["--dst_path", "--force"], ["SRC", "--dst-pth", "x"], "--dst_pth", "--dst_path"),
    (("lite", "kv_qparams"), ["--work_dir", "--turbomind_dir", "--kv_sym", "--num_tp", "--set_quant_policy"],
     ["--work_dir", "w", "--turbomind_dir", "t", "--kv_sim"], "--kv_sim", "--kv_sym"),
    (("lite", "report"), ["--model", "--work_dir", "--group_size", "--calib", "--eval_path", "--threads"],
     ["--group-sze", "64"], "--group_sze", "--group_size"),
    (("convert",), ["--model_format", "--tokenizer_path", "--dst_path", "--tp", "--group_size", "--dtype",
                    "--weight_type", "--force", "--session_len", "--act_type", "--mixed"], ["llama2", "m", "--dst_pat", "x"], "--dst_pat",
     "--dst_path"),
    (("chat",), ["--model_name", "--tp", "--session_id", "--max_new_tokens", "--temperature", "--top_p", "--top_k",
                 "--repetition_penalty", "--seed", "--cap", "--act_type"], ["WS", "--temprature", "0"], "--temprature",
     "--temperature"),
    (("serve",), ["--help"], ["--verbose"], "--verbose", "--help"),
    (("serve", "api_server"), ["--server_name", "--server_port", "--instance_num", "--tp", "--served_model_name",
                               "--api_keys", "--allowed_origins", "--max_body_mb", "--session_ttl", "--log_level",
                               "--model_name", "--session_len", "--cache_max_entry_count", "--act_type"],
     ["WS", "--api_key", "x"], "--api_key", "--api_keys"),
    (("serve", "api_client"), ["--session_id", "--api_key"], ["http://127.0.0.1:9", "--api_keys", "k"],
     "--api_keys", "--api_key"),
    (("serve", "gradio"), ["--server_name", "--server_port", "--tp", "--share", "--api_key"],
     ["WS", "--server-prt", "1"], "--server_prt", "--server_port"),
    (("bench",), ["--backends", "--prompt_len", "--decode_tokens", "--concurrency", "--threads",
                  "--cache_max_entry_count", "--act_type"], ["--backend", "turbolm"], "--backend", "--backends"),
]
IDS = [" ".join(c[0]) or "turbolm" for c in COMMANDS]


@pytest.mark.parametrize("command,flags", [(c[0], c[1]) for c in COMMANDS], ids=IDS)
def test_help_lists_the_real_flags(command, flags):
    proc = turbolm(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: turbolm"), proc.stdout
    for flag in flags:
        assert re.search(rf"(^|\s){re.escape(flag)}(\s|,|$)", proc.stdout, re.M), (flag, proc.stdout)
    assert "--worker" not in proc.stdout  # bench's internal flag stays hidden


@pytest.mark.parametrize("command,argv,typo,suggestion", [(c[0], c[2], c[3], c[4]) for c in COMMANDS], ids=IDS)
def test_unknown_flag_names_it_and_the_closest(command, argv, typo, suggestion, ws):
    # Nothing runs: a server with the typo would block until the timeout.
    proc = turbolm(*command, *[ws if a == "WS" else a for a in argv], timeout=30)
    assert_one_line_error(proc, f"no such option: {typo} (did you mean {suggestion}?)")


def test_flag_of_a_subcommand_before_its_name():
    line = assert_one_line_error(turbolm("serve", "--api_keys", "k", "api_server", "WS"), "--api_keys")
    assert "'turbolm serve api_server'" in line


def test_unknown_command_names_the_closest():
    assert_one_line_error(turbolm("serve", "api_servr", "WS"), "no such command: api_servr", "api_server")


def test_help_of_a_server_runs_nothing(ws):
    port = free_port()
    t0 = time.time()
    proc = turbolm("serve", "api_server", ws, "--server_name", "127.0.0.1", "--server_port", port, "--help",
                   timeout=30)
    assert proc.returncode == 0 and "--api_keys" in proc.stdout, proc.stderr
    assert time.time() - t0 < 20 and "Uvicorn" not in proc.stdout + proc.stderr


def test_help_imports_no_torch():
    code = ("import sys\nfrom turbolm.cli import run\n"
            "for argv in (['--help'], ['serve', 'api_server', '--help'], ['lite', 'calibrate', '--help'],"
            " ['chat', '--help'], ['bench', '--help']):\n"
            "    assert run(argv) == 0, argv\n"
            "print('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


# ---- spellings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--dst_path", "--dst-path"])
def test_dash_and_underscore_spell_one_flag(flag, tiny_model, tmp_path):
    proc = turbolm("convert", "base", tiny_model("gqa"), flag, tmp_path / "ws")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ws" / "triton_models" / "weights" / "config.ini").is_file()


@pytest.mark.parametrize("argv", [["serve", "api_server", "{missing}", "--server-port", "1", "--server-name",
                                   "127.0.0.1", "--instance-num", "2"],
                                  ["serve", "api-server", "{missing}", "--server_port", "1", "--api-keys", "a,b"],
                                  ["chat", "{missing}", "--max-new-tokens", "4", "--top_k", "1"]])
def test_both_spellings_reach_the_command(argv, tmp_path):
    # The flags parse: the command runs and fails on its missing model, not on a flag.
    missing = str(tmp_path / "no-such-ws")
    assert_one_line_error(turbolm(*[a.format(missing=missing) for a in argv]), "no such file or directory")


@pytest.mark.parametrize("force,ok", [([], False), (["--force"], True), (["--force", "True"], True),
                                      (["--force", "false"], False), (["--force=true"], True)])
def test_boolean_flag_forms(force, ok, tiny_model, tmp_path):
    dst = tmp_path / "ws"
    dst.mkdir()
    (dst / "old").write_text("x")
    # --force before the positionals: a bare boolean flag never eats the next argument
    proc = turbolm("convert", *force, "base", tiny_model("gqa"), "--dst_path", dst)
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert_one_line_error(proc, "--force")


# ---- --act_type: written by convert, refused where it cannot run ------------------------------
def test_act_type_flag(tiny_model, tmp_path, ws):
    proc = turbolm("convert", "base", tiny_model("gqa"), "--dst_path", tmp_path / "fp", "--act_type", "int8")
    assert_one_line_error(proc, "--act_type int8 needs int4/int8 weights")
    proc = turbolm("convert", "base", tiny_model("gqa"), "--dst_path", tmp_path / "q", "--weight_type", "int4",
                   "--group_size", "64", "--act_type", "int8")
    assert proc.returncode == 0, proc.stderr
    assert "act_type = int8" in (tmp_path / "q" / "triton_models" / "weights" / "config.ini").read_text()
    proc = turbolm("chat", ws, "--act_type", "int8", timeout=60)  # ws is fp16
    assert_one_line_error(proc, "act_type int8 needs an int4 or int8 workspace")
    proc = turbolm("chat", ws, "--act_type", "int4")
    assert proc.returncode == 2 and "'int4' is not one of 'float', 'int8', 'bf16'" in proc.stderr, proc.stderr


# ---- a workspace that does not load: one line, exit 2 ----------------------------------------
def _no_config(ws):
    os.remove(os.path.join(ws, "triton_models", "weights", "config.ini"))
    return "not a workspace"


def _malformed_config(ws):
    with open(os.path.join(ws, "triton_models", "weights", "config.ini"), "w") as f:
        f.write("[llama\nhead_num = 8\n")
    return "config.ini"


def _bad_config_value(ws):
    path = os.path.join(ws, "triton_models", "weights", "config.ini")
    text = open(path).read()
    with open(path, "w") as f:
        f.write(re.sub(r"(?m)^head_num = .*$", "head_num = many", text))
    return "head_num"


def _missing_weight(ws):
    os.remove(os.path.join(ws, "triton_models", "weights", "layers.1.attention.wo.0.weight"))
    return "layers.1.attention.wo.0.weight"


def _no_such_path(ws):
    shutil.rmtree(ws)
    return "no such file or directory"


BROKEN = [_no_config, _malformed_config, _bad_config_value, _missing_weight, _no_such_path]
LOADERS = [["chat", "{ws}"], ["serve", "api_server", "{ws}", "--server_name", "127.0.0.1", "--server_port", "{port}"],
           ["serve", "gradio", "{ws}", "--server_port", "{port}"]]


@pytest.mark.parametrize("loader", LOADERS, ids=["chat", "api_server", "gradio"])
@pytest.mark.parametrize("breakage", BROKEN, ids=[b.__name__.strip("_") for b in BROKEN])
def test_broken_workspace_is_one_line(loader, breakage, ws, tmp_path):
    broken = str(tmp_path / "broken")
    shutil.copytree(ws, broken)
    needle = breakage(broken)
    proc = turbolm(*[a.format(ws=broken, port=free_port()) for a in loader], timeout=60)
    assert_one_line_error(proc, needle)


# ---- a missing optional package names its extra --------------------------------------------
@pytest.mark.parametrize("module,argv,extra", [
    ("fastapi", ["serve", "api_server", "{ws}", "--server_name", "127.0.0.1", "--server_port", "{port}"], "serve"),
    ("uvicorn", ["serve", "api_server", "{ws}", "--server_name", "127.0.0.1", "--server_port", "{port}"], "serve"),
    ("gradio", ["serve", "gradio", "{ws}", "--server_port", "{port}"], "serve"),
    ("httpx", ["serve", "api_client", "http://127.0.0.1:{port}"], "serve"),
    ("torch", ["lite", "calibrate", "--model", "{ws}"], "lite"),
], ids=lambda v: v if isinstance(v, str) and not v.startswith(("serve", "lite")) else None)
def test_missing_extra_is_named(module, argv, extra, ws, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    # As on a machine without the package: `import MODULE` raises ModuleNotFoundError.
    (shim / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p)
    proc = turbolm(*[a.format(ws=ws, port=free_port()) for a in argv], env={"PYTHONPATH": path})
    assert_one_line_error(proc, f"needs {module}", f'pip install "turbolm[{extra}]"')


# ---- the README's command lines parse --------------------------------------------------------
def readme_commands():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.split(" #")[0].strip()
                if part.startswith("turbolm ") and "[" not in part and "|" not in part:
                    cmds.append(shlex.split(part)[1:])
    return cmds


def test_readme_command_lines_parse():
    cmds = readme_commands()
    assert any(c[:2] == ["lite", "export_hf"] for c in cmds) and any(c[:2] == ["serve", "api_server"] for c in cmds)
    for argv in cmds:
        proc = turbolm(*argv, "--help")  # every flag is parsed first: an unknown one fails even with --help
        assert proc.returncode == 0, (argv, proc.stderr)


def test_bench_formats_one_column_each(tiny_model):
    """`turbolm bench SRC --formats`: the source converted per weight type, one turbolm column per
    format, figures in every cell; a bad format is one line."""
    proc = turbolm("bench", tiny_model("gqa"), "--backends", "turbolm", "--formats", "int8,int4-a8", "--concurrency",
                   "1,4", "--prompt_len", "16", "--decode_tokens", "4", timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    head = next(ln for ln in lines if ln.startswith("metric"))
    assert head.split()[1:] == ["tl", "int8", "tl", "int4-a8"]
    for label in ("prefill tok/s", "decode tok/s, batch 1", "decode tok/s, 4 concurrent"):
        row = next(ln for ln in lines if ln.startswith(label))
        assert all(float(v.replace(",", "")) > 0 for v in row[42:].split()), row
    assert_one_line_error(turbolm("bench", "--formats", "int4-a9"), "unknown format 'int4-a9'")


def test_bench_formats_refuses_a_workspace(ws):
    assert_one_line_error(turbolm("bench", ws, "--formats", "int4"), "is a workspace")
    assert_one_line_error(turbolm("bench", ws, "--backends", "hf_bf16", "--formats", "int4"),
                          "add turbolm to --backends")
