"""Quantization: calibration, KV int8 qparams, AWQ."""
