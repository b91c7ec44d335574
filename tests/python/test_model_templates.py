"""Chat templates (turbolm.model): rendered prompts against hand-written strings, the incremental
rounds against the whole-history rendering, and SmolLM2 against transformers' apply_chat_template."""
import os

import pytest

from turbolm import model as templates
from turbolm.model import MODELS, HFChatTemplate, get_chat_template, split_messages

CHAT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
]

# name -> (get_prompt("Hi", True), get_prompt("2+2?", False), messages2prompt(CHAT), stop_words)
EXPECTED = {
    "base": ("Hi", "2+2?", "HiHello!2+2?", []),
    "llama2": (
        "<s>[INST] Hi [/INST]",
        " </s><s>[INST] 2+2? [/INST]",
        "<s>[INST] Hi [/INST]Hello! </s><s>[INST] 2+2? [/INST]",
        [],
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|eot_id|>", "<|end_of_text|>"],
    ),
    "vicuna": (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hi ASSISTANT: ",
        "</s>USER: 2+2? ASSISTANT: ",
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hi ASSISTANT: Hello!</s>USER: 2+2? ASSISTANT: ",
        [],
    ),
    "internlm-chat-7b": (
        "<s><|User|>:Hi<eoh>\n<|Bot|>:",
        "<eoa>\n<|User|>:2+2?<eoh>\n<|Bot|>:",
        "<s><|User|>:Hi<eoh>\n<|Bot|>:Hello!<eoa>\n<|User|>:2+2?<eoh>\n<|Bot|>:",
        ["<eoa>"],
    ),
    "qwen-7b": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
        ["<|im_end|>"],
    ),
    "smollm2": (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
        ["<|im_end|>"],
    ),
}


def test_required_names_registered():
    assert set(EXPECTED) <= set(MODELS)
    assert templates.known_model_names() == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rendered_prompts_match_hand_written(name):
    first, cont, whole, stops = EXPECTED[name]
    t = MODELS[name]()
    assert t.get_prompt("Hi", sequence_start=True) == first
    assert t.get_prompt("2+2?", sequence_start=False) == cont
    assert t.messages2prompt(CHAT) == whole
    assert t.stop_words == stops


@pytest.mark.parametrize("name", sorted(MODELS))
def test_incremental_rounds_equal_the_whole_history(name):
    """What a session's KV cache holds after rounds of get_prompt + answer is the whole-history prompt."""
    t = MODELS[name]()
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "uno"},
               {"role": "user", "content": "two"}, {"role": "assistant", "content": "dos"},
               {"role": "user", "content": "three"}]
    cache = t.get_prompt("one", True) + "uno" + t.get_prompt("two", False) + "dos" + t.get_prompt("three", False)
    assert cache == t.messages2prompt(history)


def test_system_message_overrides_default_and_llama2_folds_it_into_the_first_turn():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert MODELS["llama2"]().messages2prompt(msgs) == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"
    assert MODELS["smollm2"]().messages2prompt(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert MODELS["llama3"](system="S").get_prompt("Hi") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_openai_content_parts_and_roles():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert split_messages(msgs) == (None, [("ab", None)])
    with pytest.raises(ValueError, match="role"):
        split_messages([{"role": "wizard", "content": "x"}])


def test_completion_capability_is_raw_text():
    assert MODELS["smollm2"](capability="completion").get_prompt("raw", True) == "raw"


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_hf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_hf)


SMOL_HISTORIES = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Hello"}],
    CHAT,
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "ünïcødé 你好"}],
]


@pytest.mark.parametrize("messages", SMOL_HISTORIES)
def test_smollm2_matches_transformers_apply_chat_template(smollm2_tokenizer, messages):
    want = smollm2_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert MODELS["smollm2"]().messages2prompt(messages) == want
    assert HFChatTemplate(smollm2_tokenizer).messages2prompt(messages) == want


def test_tokenizer_own_template_rounds_and_fallbacks(smollm2_tokenizer):
    own = get_chat_template("not-registered", smollm2_tokenizer)
    assert isinstance(own, HFChatTemplate)
    smol = MODELS["smollm2"]()
    assert own.get_prompt("Hi", True) == smol.get_prompt("Hi", True)
    assert own.get_prompt("2+2?", False) == smol.get_prompt("2+2?", False)
    assert own.stop_words == ["<|im_end|>"]
    # the model's own template by default; a registered name asked for explicitly wins
    assert isinstance(get_chat_template("smollm2", smollm2_tokenizer), HFChatTemplate)
    assert type(get_chat_template("smollm2", smollm2_tokenizer, prefer_tokenizer=False)) is MODELS["smollm2"]
    assert type(get_chat_template("not-registered", None)) is MODELS["base"]


def test_end_of_turn_ids_from_generation_config(tiny_model, tmp_path):
    """A chat model listing several eos ids in generation_config.json (Llama 3, Qwen, Gemma do) stops
    on every one of them, through its own template (the default when it ships one)."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from turbolm.tokenizer import Tokenizer

    src = tiny_model("gqa")
    dst = tmp_path / "tok"
    dst.mkdir()
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.isfile(os.path.join(src, f)):
            shutil.copy(os.path.join(src, f), dst / f)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    (dst / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7, 9]}))
    tok = Tokenizer(str(dst))
    assert tok.eos_token_ids == [2, 7, 9]
    template = get_chat_template("llama2", tok)  # the model's own template wins over the name
    assert isinstance(template, HFChatTemplate)
    hf = AutoTokenizer.from_pretrained(str(dst))
    assert template.stop_words == [hf.convert_ids_to_tokens(i) for i in (2, 7, 9)]
    assert tok.stop_words_to_ids(template.stop_words)  # every stop maps to ids the engine matches
    assert type(get_chat_template("llama2", tok, prefer_tokenizer=False)) is MODELS["llama2"]
