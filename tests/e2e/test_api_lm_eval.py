"""lm-evaluation-harness against the server, as its users run it: `lm_eval --model local-completions`
on SmolLM2 behind `turbolm serve api_server`, with two small local tasks built from
../shared/data (no hub access): a multiple-choice task (loglikelihood: echo + logprobs) and a
perplexity task (loglikelihood_rolling). The harness must finish and report plausible figures."""
import json
import os
import random
import subprocess
import sys

import pytest


DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "tinyshakespeare.txt")
N_DOCS = 24


@pytest.fixture(scope="module")
def smol_server(smollm2_server):
    return smollm2_server


def write_tasks(root) -> None:
    """turbolm_mc: a line, then which of two lines follows it: the true next line, or the same
    words in a shuffled order (same length and words, so only the model's sense of English can
    tell them apart); turbolm_ppl: whole passages scored token by token."""
    lines = [ln.strip() for ln in open(DATA).read().splitlines() if len(ln.strip()) > 30]
    mc, ppl = [], []
    for k in range(N_DOCS):
        i = 40 + 37 * k
        words = lines[i + 1].split()
        random.Random(k).shuffle(words)
        scrambled = " ".join(words)
        label = k % 2  # the true continuation alternates between the two choices
        choices = [scrambled, lines[i + 1]] if label else [lines[i + 1], scrambled]
        mc.append({"context": lines[i], "choices": choices, "label": label})
        ppl.append({"text": "\n".join(lines[i:i + 6])})
    for name, rows in (("mc", mc), ("ppl", ppl)):
        with open(root / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root}/{{name}}.jsonl\ntest_split: test\n"
    (root / "turbolm_mc.yaml").write_text(
        "task: turbolm_mc\n" + common.format(name="mc") +
        "output_type: multiple_choice\ndoc_to_text: \"{{context}}\\n\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{label}}\"\ntarget_delimiter: \"\"\nmetric_list:\n  - metric: acc\n")
    (root / "turbolm_ppl.yaml").write_text(
        "task: turbolm_ppl\n" + common.format(name="ppl") +
        "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\nmetric_list:\n"
        "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")


def test_lm_eval_local_completions_runs_against_the_server(smol_server, smollm2_ws, tmp_path):
    import lm_eval  # noqa: F401  -- the [test] extra installs it
    write_tasks(tmp_path)
    log_start = len(smol_server.log())
    tokenizer = os.path.join(smollm2_ws, "triton_models", "tokenizer")
    model_args = (f"model=smollm2,base_url={smol_server.url}/v1/completions,tokenizer={tokenizer},"
                  "tokenizer_backend=huggingface,num_concurrent=4,max_retries=1,max_length=512")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
                          "--tasks", "turbolm_mc,turbolm_ppl", "--include_path", str(tmp_path), "--output_path",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-5000:])
    results = None
    for dirpath, _, files in os.walk(tmp_path / "out"):
        for f in files:
            if f.startswith("results") and f.endswith(".json"):
                results = json.load(open(os.path.join(dirpath, f)))["results"]
    assert results is not None, out.stdout[-3000:]
    acc = results["turbolm_mc"]["acc,none"]
    ppl = results["turbolm_ppl"]["word_perplexity,none"]
    bpb = results["turbolm_ppl"]["bits_per_byte,none"]
    print(f"lm_eval on SmolLM2 via turbolm: acc {acc:.3f} over {N_DOCS}, word_perplexity {ppl:.1f}, "
          f"bits_per_byte {bpb:.3f}")
    # plausible for a 135M model: the line in its real word order wins far more often than chance,
    # and the perplexity is finite and far below a uniform guess over the vocabulary
    assert acc >= 0.75
    assert 1.0 < ppl < 5000 and 0.3 < bpb < 3.0
    # every request the harness made was answered 200: the server's log shows no 4xx/5xx
    log = smol_server.log()[log_start:]
    assert " 200 " in log and " 400 " not in log and " 500 " not in log, log[-3000:]
