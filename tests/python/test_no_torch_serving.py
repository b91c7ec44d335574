"""Serving needs no torch (DESIGN.md §2): with torch hidden from the interpreter, exactly as on a
machine where it is not installed, a workspace loads, tokenizes, generates, and the chat, API
server and Gradio modules import. (When torch IS installed, transformers imports it eagerly;
that costs start-up time, not correctness.)"""
import subprocess
import sys
import textwrap

HIDE_TORCH = textwrap.dedent("""
    import sys, importlib.machinery, importlib.metadata as md

    class NoTorchPathFinder(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                return None
            return super().find_spec(name, path, target)

    sys.meta_path[:] = [NoTorchPathFinder if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    _version = md.version

    def version(name):
        if name == "torch":
            raise md.PackageNotFoundError(name)
        return _version(name)

    md.version = version
""")


def test_serving_path_runs_without_torch(tiny_model, tmp_path):
    from turbolm.converter.main import main as convert

    ws = str(tmp_path / "ws")
    convert("base", tiny_model("gqa"), dst_path=ws)
    code = HIDE_TORCH + textwrap.dedent(f"""
        from turbolm import turbomind as tm
        import turbolm.serve.api_server, turbolm.serve.gradio_app, turbolm.chat
        m = tm.TurboMind.from_pretrained({ws!r})
        ids = m.tokenizer.encode("hello there")
        out = list(m.create_instance().stream_infer(1, [ids], request_output_len=4, top_k=1, sequence_end=True))
        assert out[-1][0][1] == 4, out
        print("torch loaded:", "torch" in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "torch loaded: False"
