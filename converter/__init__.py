"""HF / AWQ / GGUF checkpoint -> TurboMind workspace."""
