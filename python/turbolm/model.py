"""Chat templates: a registry by model name (`MODELS`). Placeholder until the serving issue
fleshes each template out; `convert` uses the names to refuse unknown ones."""
from typing import Callable, Dict, Type

MODELS: Dict[str, Type["BaseModel"]] = {}


def register(name: str) -> Callable:
    def deco(cls):
        MODELS[name] = cls
        return cls
    return deco


def known_model_names():
    return sorted(MODELS)


@register("base")
class BaseModel:
    """No template: the prompt is sent as is."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def get_prompt(self, prompt: str, sequence_start: bool = True) -> str:
        return prompt


for _name in ("llama2", "llama3", "vicuna", "internlm-chat-7b", "qwen-7b", "smollm2"):
    register(_name)(type(_name.replace("-", "_"), (BaseModel,), {}))
