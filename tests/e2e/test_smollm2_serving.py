"""A real model end to end: SmolLM2-135M-Instruct (GGUF -> workspace) behind the API server,
answering through the official openai client with its ChatML template."""
import httpx
import pytest



@pytest.fixture(scope="module")
def smol_server(smollm2_server):
    return smollm2_server


def test_smollm2_answers_and_streams(smol_server):
    import openai

    client = openai.OpenAI(base_url=smol_server.url + "/v1", api_key="x", max_retries=0, timeout=300)
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=24, temperature=0)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"  # <|im_end|> ended it, and is not in the text
    assert "<|im_end|>" not in r.choices[0].message.content
    # the prompt the server built is the model's own ChatML with its default system prompt
    want = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = httpx.post(smol_server.url + "/v1/encode", json={"input": want, "add_bos": False}).json()["input_ids"]
    assert r.usage.prompt_tokens == len(ids)
    stream = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=24, temperature=0,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == r.choices[0].message.content
