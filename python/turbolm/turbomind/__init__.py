"""The engine from Python: ``TurboMind.from_pretrained(path)`` and its instances.

    from turbolm import turbomind as tm
    model = tm.TurboMind.from_pretrained("./workspace")
    gen = model.create_instance()
    for outputs in gen.stream_infer(session_id=0, input_ids=[ids]):
        token_ids, length = outputs[0]
"""
from .turbomind import GenOut, TurboMind, TurboMindInstance

__all__ = ["TurboMind", "TurboMindInstance", "GenOut"]
