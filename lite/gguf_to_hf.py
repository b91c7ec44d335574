"""A GGUF file as an fp32 HF model folder, so `lite` (and HF transformers as an oracle) can work on
a model that ships only as GGUF. transformers dequantizes the tensors (it needs `accelerate`);
the quantizer left on the model and its config must be dropped before save_pretrained."""
from __future__ import annotations

import os
import shutil
import tempfile


def gguf_to_hf(gguf_path: str, out_dir: str) -> str:
    """Writes ``out_dir`` (config, safetensors, tokenizer) atomically; returns it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf_path))
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=".gguf2hf-")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
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
