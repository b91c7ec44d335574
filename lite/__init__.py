"""Quantization: calibration statistics, KV int8 qparams, AWQ smoothing and packing.

- ``calib_data``: calibration samples from a .txt/.jsonl file or a cached named set;
- ``calibrate``: layer-by-layer activation / post-RoPE KV statistics (``turbolm lite calibrate``);
- ``kv_qparams``: ``layers.i.past_kv_scale.r.weight`` for int8 KV (``turbolm lite kv_qparams``);
- ``auto_awq`` (+ ``awq_search``, ``quantize``, ``awq_pack``, ``awq_checkpoint``): AWQ int4/int8
  weights saved as an AutoAWQ GEMM checkpoint (``turbolm lite auto_awq``).
"""
