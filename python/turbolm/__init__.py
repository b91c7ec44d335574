"""turbolm: compress, convert and serve LLaMA-family models with a C++ persistent-batch runtime."""
__version__ = "0.1.0"
