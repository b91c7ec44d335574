"""What a source tells a target: the model's shape (``ModelSpec``) and, per layer, its tensors in
one canonical form (``LAYER_KEYS``), whatever the checkpoint format was.

Canonical form (the HF convention, so every source has one obvious mapping):
- every tensor is a float32 numpy array;
- linear weights are ``[out, in]`` (torch ``nn.Linear`` layout);
- q and k rows are in HF's rotate-half order within each head (sources whose files are already
  interleaved, like llama.cpp's GGUF, undo that); the target permutes them once;
- biases are ``[out]``; norms are ``[hidden]``.
"""
from __future__ import annotations

import dataclasses

from turbolm.config import format_floats

# name -> shape as a function of the spec; optional keys may be absent from a layer dict
LAYER_KEYS = {
    "q": lambda s: (s.head_num * s.head_dim, s.hidden),
    "k": lambda s: (s.kv_head_num * s.head_dim, s.hidden),
    "v": lambda s: (s.kv_head_num * s.head_dim, s.hidden),
    "o": lambda s: (s.hidden, s.head_num * s.head_dim),
    "gate": lambda s: (s.inter, s.hidden),
    "up": lambda s: (s.inter, s.hidden),
    "down": lambda s: (s.hidden, s.inter),
    "attention_norm": lambda s: (s.hidden,),
    "ffn_norm": lambda s: (s.hidden,),
}
OPTIONAL_LAYER_KEYS = {
    "q_bias": lambda s: (s.head_num * s.head_dim,),
    "k_bias": lambda s: (s.kv_head_num * s.head_dim,),
    "v_bias": lambda s: (s.kv_head_num * s.head_dim,),
    "o_bias": lambda s: (s.hidden,),
    "q_norm": lambda s: (s.head_dim,),  # Qwen3 / Gemma 3: RMSNorm of each q / k head before RoPE
    "k_norm": lambda s: (s.head_dim,),
    "post_attention_norm": lambda s: (s.hidden,),  # Gemma 2/3: RMSNorm of the attention output
    "post_ffn_norm": lambda s: (s.hidden,),        # ... and of the FFN output, before the residual add
}


def optional_wanted(s, key: str) -> bool:
    """Whether the model (spec `s`) has optional layer tensor `key`."""
    if key == "o_bias":
        return s.o_bias
    if key in ("q_norm", "k_norm"):
        return s.qk_norm
    if key in ("post_attention_norm", "post_ffn_norm"):
        return s.post_norm
    return s.qkv_bias


@dataclasses.dataclass
class ModelSpec:
    architecture: str
    num_layer: int
    hidden: int
    head_num: int
    kv_head_num: int
    head_dim: int
    inter: int
    vocab: int
    norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    rope_scaling_factor: float = 0.0   # the factor of rope_type (dynamic: > 0 enables NTK)
    rope_type: str = ""                # "" | dynamic | linear | llama3 (config.ini's rope_type)
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_position_embeddings: int = 8192  # llama3
    qkv_bias: bool = False
    qk_norm: bool = False              # Qwen3: q_norm / k_norm per head
    rotary_dim: int = 0                # partial rotary (Phi-3.5 / Phi-4-mini): RoPE on the first dims of a head; 0 = all
    sliding_window: int = 0            # > 0: attention sees only the last `sliding_window` positions
    o_bias: bool = False
    tied: bool = False
    bos_id: int = 1
    eos_id: int = 2
    src_dtype: str = "fp16"            # fp16 | bf16 | fp32 | int4 | int8: picks the default output weight type
    quant_group_size: int = 0          # a quantized source (AWQ): its group size; its linears are quant.QuantLinear
                                       # PER_CHANNEL (quant.py): one scale per output row, any group size fits
    act_type: str = "float"            # the activations the source was quantized for (W8A8: int8)
    # Architecture switches (config.ini keys of the same names; LLaMA's values by default):
    hidden_act: str = "silu"           # silu | gelu_tanh
    norm_offset: float = 0.0           # RMSNorm by (norm_offset + w): Gemma 1
    embedding_scale: float = 1.0       # Gemma: sqrt(hidden)
    post_norm: bool = False            # Gemma 2/3: post_attention_norm / post_ffn_norm
    attn_scale: float = 0.0            # 0: 1/sqrt(head_dim)
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    sliding_layers: str = ""           # one 0/1 per layer ("" = all, when sliding_window > 0)
    rope_local_theta: float = 0.0      # Gemma 3's sliding layers
    rope_freq_factors: tuple = ()      # per rotary pair divisors (yarn, longrope short, GGUF rope_freqs)
    rope_long_freq_factors: tuple = ()  # longrope past rope_original_max_position_embeddings
    rope_attention_factor: float = 1.0
    int8_linears: tuple = ()           # a mixed-precision quantized source: its int8 linears ("i.w_qkv", ...)
    head_bits: int = 0                 # a quantized lm head in the source (GPTQ lm_head): its bits; output() is a
                                       # QuantLinear then, and a tied one is the embedding table too

    def arch_config(self) -> dict:
        """The config.ini keys of the architecture switches."""
        return dict(hidden_act=self.hidden_act, norm_offset=self.norm_offset, embedding_scale=self.embedding_scale,
                    post_norm=int(self.post_norm), attn_scale=self.attn_scale, attn_softcap=self.attn_softcap,
                    final_softcap=self.final_softcap, sliding_window=self.sliding_window,
                    sliding_layers=self.sliding_layers, rope_local_theta=self.rope_local_theta,
                    rope_freq_factors=format_floats(self.rope_freq_factors),
                    rope_long_freq_factors=format_floats(self.rope_long_freq_factors),
                    rope_attention_factor=self.rope_attention_factor)
