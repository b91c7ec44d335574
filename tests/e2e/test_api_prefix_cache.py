"""Automatic prefix caching as API clients see it: a second request whose prompt starts like the
first's reports the reused tokens in usage.prompt_tokens_details.cached_tokens (the openai client
reads it), and answers exactly as the first did."""


def test_cached_tokens_reported_and_answer_unchanged(openai_client):
    prompt = " ".join(f"w{i}" for i in range(200))  # well over one 128-token block
    kw = dict(model=None, prompt=prompt, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    first = openai_client.completions.create(**kw)
    second = openai_client.completions.create(**kw)
    n = first.usage.prompt_tokens
    assert n > 128
    assert second.usage.prompt_tokens_details.cached_tokens == (n - 1) // 128 * 128
    assert second.choices[0].text == first.choices[0].text
    chat = dict(model=None, messages=[{"role": "user", "content": prompt}], max_tokens=4, temperature=0)
    first_chat = openai_client.chat.completions.create(**chat)
    again = openai_client.chat.completions.create(**chat)
    n = first_chat.usage.prompt_tokens
    assert again.usage.prompt_tokens_details.cached_tokens == (n - 1) // 128 * 128 > 0
    assert again.choices[0].message.content == first_chat.choices[0].message.content
