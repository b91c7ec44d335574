"""HF transformers checkpoints: config.json + safetensors (single or sharded) or pytorch_model*.bin."""
from __future__ import annotations

import glob
import json
import os
from typing import Dict, Optional

import numpy as np

from turbolm.errors import UserError

from ..quant import HF_LINEAR_MODULES
from ..safetensors_io import SafetensorsFile
from ..rope_scaling import apply_rope_scaling
from ..spec import LAYER_KEYS, OPTIONAL_LAYER_KEYS, ModelSpec, optional_wanted
from ..tokenizer import copy_hf_tokenizer
from . import Source, register_source

_LLAMA_LAYER = {
    **{k: f"{m}.weight" for k, m in HF_LINEAR_MODULES.items()}, "attention_norm": "input_layernorm.weight",
    "ffn_norm": "post_attention_layernorm.weight",
    "q_bias": "self_attn.q_proj.bias", "k_bias": "self_attn.k_proj.bias", "v_bias": "self_attn.v_proj.bias",
    "o_bias": "self_attn.o_proj.bias",
    "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight",
}
_LLAMA_NAMES = {"layer_prefix": "model.layers.{i}.", "layer": _LLAMA_LAYER, "embed": "model.embed_tokens.weight",
                "norm": "model.norm.weight", "output": "lm_head.weight"}

# Phi-3 / Phi-3.5 / Phi-4-mini: q/k/v fused into one matrix (rows [q | k | v]), gate/up into one
# (rows [gate | up]); "fused" names them, and the canonical tensors are row slices of them.
_PHI3_NAMES = dict(_LLAMA_NAMES, fused={"qkv": "self_attn.qkv_proj.weight", "gate_up": "mlp.gate_up_proj.weight"})

# InternLM2: its own names, and wqkv packed per kv head: rows [q heads of group g | k_g | v_g] for
# g < kv heads (split_qkv_grouped).
_INTERNLM2_NAMES = {
    "layer_prefix": "model.layers.{i}.", "embed": "model.tok_embeddings.weight", "norm": "model.norm.weight",
    "output": "output.weight", "qkv_layout": "grouped",
    "layer": {"o": "attention.wo.weight", "gate": "feed_forward.w1.weight", "up": "feed_forward.w3.weight",
              "down": "feed_forward.w2.weight", "attention_norm": "attention_norm.weight",
              "ffn_norm": "ffn_norm.weight", "o_bias": "attention.wo.bias"},
    "fused": {"qkv": "attention.wqkv.weight"},
}

# Gemma 2/3: four norms a layer (input, post-attention, pre- and post-feedforward), stored as w for
# a scale of (1 + w); GeGLU; scaled embeddings; sliding-window layers (gemma_config).
_GEMMA_NAMES = dict(_LLAMA_NAMES, layer=dict(
    _LLAMA_LAYER, ffn_norm="pre_feedforward_layernorm.weight", post_attention_norm="post_attention_layernorm.weight",
    post_ffn_norm="post_feedforward_layernorm.weight"))


def gemma_config(spec: ModelSpec, cfg: dict) -> None:
    spec.norm_offset = 1.0
    spec.embedding_scale = float(np.float32(spec.hidden ** 0.5))  # HF: a tensor of the activations' dtype
    spec.post_norm = True
    spec.attn_scale = float(cfg.get("query_pre_attn_scalar") or spec.head_dim) ** -0.5
    spec.attn_softcap = float(cfg.get("attn_logit_softcapping") or 0.0)
    spec.final_softcap = float(cfg.get("final_logit_softcapping") or 0.0)


# architecture (config.json "architectures"[0]) -> tensor names, plus:
#   "config": fn(spec, cfg) for keys beyond LLaMA's; "sliding_every": the default layer pattern
#   (layer i slides unless (i + 1) % n == 0) when config.json has no layer_types.
# Biases are read when present: Qwen2 has them on q/k/v, InternLM (and LLaMA with attention_bias) on q/k/v/o.
ARCHITECTURES: Dict[str, dict] = {
    "LlamaForCausalLM": _LLAMA_NAMES,
    "MistralForCausalLM": _LLAMA_NAMES,
    "Qwen2ForCausalLM": _LLAMA_NAMES,
    "Qwen3ForCausalLM": _LLAMA_NAMES,  # + q/k norm per head, no q/k/v bias
    "InternLMForCausalLM": _LLAMA_NAMES,
    "InternLM2ForCausalLM": _INTERNLM2_NAMES,
    "Phi3ForCausalLM": _PHI3_NAMES,    # + partial_rotary_factor
    "Gemma2ForCausalLM": dict(_GEMMA_NAMES, config=gemma_config, sliding_every=2),
    "Gemma3ForCausalLM": dict(_GEMMA_NAMES, config=gemma_config, sliding_every=6),  # + q/k norm, local RoPE
}
_FUSED_OF = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}
# HF hidden_act / hidden_activation -> config.ini hidden_act
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


def split_qkv_grouped(m: np.ndarray, heads: int, kv_heads: int, head_dim: int):
    """InternLM2's wqkv rows [kv_heads][heads / kv_heads + 2][head_dim] -> q, k, v (rows in head order)."""
    g = heads // kv_heads
    x = m.reshape(kv_heads, g + 2, head_dim, *m.shape[1:])
    q = x[:, :g].reshape(heads * head_dim, *m.shape[1:])
    return q, x[:, g].reshape(kv_heads * head_dim, *m.shape[1:]), x[:, g + 1].reshape(kv_heads * head_dim, *m.shape[1:])


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) and x else x


class _TorchBinFile:
    """pytorch_model*.bin through torch (the only format here that needs torch)."""

    def __init__(self, path: str):
        try:
            import torch
        except ImportError:
            raise UserError(f"{path}: reading pytorch_model.bin needs torch (pip install torch), "
                            "or re-save the model as safetensors") from None
        self._torch = torch
        try:
            self.sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001  (any unpickling failure means a bad file)
            raise UserError(f"{path} is truncated or corrupt ({type(e).__name__}); re-download or re-save "
                            "the checkpoint") from None
        self.entries = {k: None for k in self.sd}

    def dtype_name(self, name):
        return {self._torch.bfloat16: "bf16", self._torch.float16: "fp16"}.get(self.sd[name].dtype, "fp32")

    def shape(self, name):
        return tuple(self.sd[name].shape)

    def get_fp32(self, name):
        return self.sd[name].float().numpy()

    def get_raw(self, name):  # stored dtype (AWQ's int32 qweight/qzeros), as safetensors_io's get_raw
        t = self.sd[name]
        return t.view(self._torch.int16).numpy().view(np.uint16) if t.dtype == self._torch.bfloat16 else t.numpy()

    def close(self):
        self.sd = {}


def _open_weight_files(model_path: str):
    """{tensor name: file object} for the checkpoint's weight files, every header validated."""
    for index_name, opener in (("model.safetensors.index.json", SafetensorsFile),
                               ("pytorch_model.bin.index.json", _TorchBinFile)):
        index = os.path.join(model_path, index_name)
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (ValueError, KeyError):
                raise UserError(f"{index} is corrupt (no weight_map); re-download the checkpoint") from None
            files = {}
            for shard in sorted(set(weight_map.values())):
                p = os.path.join(model_path, shard)
                if not os.path.isfile(p):
                    raise UserError(f"{p} is listed in {index_name} but missing; re-download the checkpoint")
                files[shard] = opener(p)
            return {name: files[shard] for name, shard in weight_map.items()}, list(files.values())
    paths = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    opener = SafetensorsFile
    if not paths:
        paths, opener = sorted(glob.glob(os.path.join(model_path, "pytorch_model*.bin"))), _TorchBinFile
    if not paths:
        raise UserError(f"{model_path} has no weights (*.safetensors or pytorch_model.bin)")
    files = [opener(p) for p in paths]
    return {name: f for f in files for name in f.entries}, files


@register_source("hf")
class HFSource(Source):
    @classmethod
    def claims(cls, model_path: str) -> bool:
        return os.path.isdir(model_path) and os.path.isfile(os.path.join(model_path, "config.json"))

    def __init__(self, model_path: str, tokenizer_path: Optional[str] = None):
        if not os.path.exists(model_path):
            raise UserError(f"model path {model_path} does not exist")
        if not os.path.isdir(model_path):
            raise UserError(f"{model_path} is not a directory; an HF model is a folder with config.json "
                            "(use --model-format gguf for a .gguf file)")
        cfg_path = os.path.join(model_path, "config.json")
        if not os.path.isfile(cfg_path):
            raise UserError(f"{model_path} has no config.json: not an HF model folder")
        try:
            with open(cfg_path) as f:
                cfg = json.load(f)
        except ValueError as e:
            raise UserError(f"{cfg_path} is not valid JSON ({e})") from None
        self.model_path, self.cfg = model_path, cfg
        self.tokenizer_path = tokenizer_path or model_path
        copy_hf_tokenizer(self.tokenizer_path, None)  # dry run: refuse a missing tokenizer before any work

        arch = _first(cfg.get("architectures")) or "(none)"
        if arch not in ARCHITECTURES:
            raise UserError(f"{cfg_path}: architecture {arch} is not supported; supported: "
                            f"{', '.join(sorted(ARCHITECTURES))}")
        self._check_quantization(cfg, cfg_path)
        if cfg.get("mlp_bias") or (arch == "InternLM2ForCausalLM" and cfg.get("bias")):
            raise UserError(f"{cfg_path}: MLP / packed wqkv biases are not supported by the workspace format")
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
        if act not in _ACTIVATIONS:
            raise UserError(f"{cfg_path}: hidden_act {act} is not supported (supported: {', '.join(_ACTIVATIONS)})")
        self.names = ARCHITECTURES[arch]
        self.tensors, self._files = _open_weight_files(model_path)
        self.spec = self._make_spec(arch, cfg)
        self._check_tensors()

    # -- config ------------------------------------------------------------------------------
    def _check_quantization(self, cfg: dict, cfg_path: str) -> None:
        if cfg.get("quantization_config"):
            method = cfg["quantization_config"].get("quant_method", "?")
            raise UserError(f"{cfg_path}: a {method}-quantized checkpoint cannot be read as --model-format hf; "
                            f"use the fp16/bf16 model (or --model-format awq / gptq / w8a8 for those checkpoints)")

    def _make_spec(self, arch: str, cfg: dict) -> ModelSpec:
        try:
            hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            spec = ModelSpec(
                architecture=arch, num_layer=int(cfg["num_hidden_layers"]), hidden=hidden, head_num=heads,
                kv_head_num=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads), inter=int(cfg["intermediate_size"]),
                vocab=int(cfg["vocab_size"]), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=1.0, max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{self.model_path}/config.json: missing or bad key {e}") from None
        spec.hidden_act = _ACTIVATIONS[cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"]
        factor = float(cfg.get("partial_rotary_factor", 1.0) or 1.0)
        rot = int(round(spec.head_dim * factor))
        if rot % 2 or not 0 < rot <= spec.head_dim:
            raise UserError(f"{self.model_path}/config.json: partial_rotary_factor {factor} gives {rot} rotary dims "
                            f"of {spec.head_dim}; they must be even and positive")
        spec.rotary_dim = rot if rot < spec.head_dim else 0
        self._rope(spec, cfg, rot)
        self._sliding(spec, cfg)
        if "config" in self.names:
            self.names["config"](spec, cfg)
        gen = {}
        gen_path = os.path.join(self.model_path, "generation_config.json")
        if os.path.isfile(gen_path):
            try:
                with open(gen_path) as f:
                    gen = json.load(f)
            except ValueError:
                gen = {}
        bos = _first(gen.get("bos_token_id", cfg.get("bos_token_id")))
        eos = _first(gen.get("eos_token_id", cfg.get("eos_token_id")))
        spec.bos_id = int(bos) if bos is not None else 1
        spec.eos_id = int(eos) if eos is not None else 2
        head = self.names["output"]  # no lm head of its own (nor a quantized one, GPTQ lm_head): tied
        spec.tied = bool(cfg.get("tie_word_embeddings", False)) or (
            head not in self.tensors and head.replace(".weight", ".qweight") not in self.tensors)
        return spec

    def _rope(self, spec: ModelSpec, cfg: dict, rot: int) -> None:
        """RoPE base and scaling. transformers 5 writes rope_parameters (per layer type for Gemma 3:
        full_attention / sliding_attention); older configs rope_theta + rope_scaling (+ Gemma 3's
        rope_local_base_freq)."""
        params = cfg.get("rope_parameters") or {}
        local = {}
        if "full_attention" in params:
            params, local = params["full_attention"] or {}, params.get("sliding_attention") or {}
        spec.rope_theta = float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)
        scaling = dict(cfg.get("rope_scaling") or params)
        if "original_max_position_embeddings" in cfg:  # Phi-3 keeps it at the top level
            scaling.setdefault("original_max_position_embeddings", cfg["original_max_position_embeddings"])
        apply_rope_scaling(spec, scaling, rot, f"{self.model_path}/config.json")
        local_theta = local.get("rope_theta") or cfg.get("rope_local_base_freq")
        if local_theta:
            if (local.get("rope_type") or "default") != "default":
                raise UserError(f"{self.model_path}/config.json: scaled RoPE on sliding layers is not supported")
            spec.rope_local_theta = float(local_theta)

    def _sliding(self, spec: ModelSpec, cfg: dict) -> None:
        """Which layers attend through a sliding window: config.json's layer_types, else the
        architecture's pattern, else (Mistral) all of them."""
        window = cfg.get("sliding_window")
        if not window or not cfg.get("use_sliding_window", True):  # Qwen2 sets a window it does not use
            return
        types = cfg.get("layer_types")
        every = self.names.get("sliding_every")
        if types:
            if len(types) != spec.num_layer:
                raise UserError(f"{self.model_path}/config.json: layer_types has {len(types)} entries for "
                                f"{spec.num_layer} layers")
            flags = [t == "sliding_attention" for t in types]
        elif every:
            flags = [bool((i + 1) % every) for i in range(spec.num_layer)]
        else:
            flags = [True] * spec.num_layer
        if not any(flags):
            return
        spec.sliding_window = int(window)
        spec.sliding_layers = "" if all(flags) else "".join("1" if f else "0" for f in flags)

    def _name(self, i: int, key: str) -> Optional[str]:
        fused = self.names.get("fused", {}).get(_FUSED_OF.get(key, ""))
        name = fused or self.names["layer"].get(key)
        return self.names["layer_prefix"].format(i=i) + name if name else None

    def _unfuse(self, out: dict) -> None:
        """q/k/v and gate/up as row slices of their fused matrices (architectures with "fused")."""
        s = self.spec
        if "qkv" in self.names.get("fused", {}):
            qkv, hq, hk = out["q"], s.head_num * s.head_dim, s.kv_head_num * s.head_dim
            if self.names.get("qkv_layout") == "grouped":
                out["q"], out["k"], out["v"] = split_qkv_grouped(qkv, s.head_num, s.kv_head_num, s.head_dim)
            else:
                out["q"], out["k"], out["v"] = qkv[:hq], qkv[hq:hq + hk], qkv[hq + hk:]
        if "gate_up" in self.names.get("fused", {}):
            gu = out["gate"]
            out["gate"], out["up"] = gu[:s.inter], gu[s.inter:]

    def _expected(self, name: str, key: str, shape: tuple) -> dict:
        """The checkpoint tensors (name -> shape) that hold canonical tensor ``key``."""
        fused = self.names.get("fused", {}).get(_FUSED_OF.get(key, ""))
        if fused:  # the fused matrix, of which this tensor is rows
            s = self.spec
            rows = (s.head_num + 2 * s.kv_head_num) * s.head_dim if _FUSED_OF[key] == "qkv" else 2 * s.inter
            return {name: (rows, s.hidden)}
        return {name: shape}

    def _check_tensors(self) -> None:
        s = self.spec
        s.qkv_bias = self._name(0, "q_bias") in self.tensors
        s.o_bias = self._name(0, "o_bias") in self.tensors
        s.qk_norm = self._name(0, "q_norm") in self.tensors
        s.post_norm = self._name(0, "post_attention_norm") in self.tensors
        expected = {self.names["embed"]: (s.vocab, s.hidden), self.names["norm"]: (s.hidden,),
                    **self._output_expected()}
        for i in range(s.num_layer):
            for key, shape in LAYER_KEYS.items():
                expected.update(self._expected(self._name(i, key), key, shape(s)))
            for key, shape in OPTIONAL_LAYER_KEYS.items():
                if optional_wanted(s, key):
                    expected[self._name(i, key)] = shape(s)
        for name, shape in expected.items():
            if name not in self.tensors:
                raise UserError(f"{self.model_path}: tensor {name} is missing; the checkpoint is incomplete "
                                "or config.json does not match it")
            got = self.tensors[name].shape(name)
            if got != shape:
                raise UserError(f"{self.model_path}: tensor {name} has shape {list(got)}, config.json implies "
                                f"{list(shape)}")
        s.src_dtype = self.tensors[self.names["embed"]].dtype_name(self.names["embed"])

    def _output_expected(self) -> dict:
        """The lm head's tensors and shapes (none when tied to the embeddings)."""
        return {} if self.spec.tied else {self.names["output"]: (self.spec.vocab, self.spec.hidden)}

    # -- tensors -----------------------------------------------------------------------------
    def _get(self, name: str) -> np.ndarray:
        return self.tensors[name].get_fp32(name)

    def tok_embeddings(self):
        return self._get(self.names["embed"])

    def output(self):
        return self._get(self.names["embed"] if self.spec.tied else self.names["output"])

    def norm(self):
        return self._get(self.names["norm"])

    def layer(self, i):
        keys = list(LAYER_KEYS) + [k for k in OPTIONAL_LAYER_KEYS if optional_wanted(self.spec, k)
                                   and self._name(i, k) in self.tensors]
        read: Dict[str, np.ndarray] = {}  # a fused matrix is read once
        out = {}
        for k in keys:
            name = self._name(i, k)
            if name not in read:
                read[name] = self._get(name)
            out[k] = read[name]
        self._unfuse(out)
        return out

    def write_tokenizer(self, dst_dir):
        copy_hf_tokenizer(self.tokenizer_path, dst_dir)

    def close(self):
        for f in self._files:
            f.close()
