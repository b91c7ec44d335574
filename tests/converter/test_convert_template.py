"""workspace_template/: the documented config.ini covers exactly the schema, and serve.sh serves."""
import configparser
import os

from turbolm.config import SCHEMA, SECTION

TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "workspace_template")


def test_config_template_documents_every_schema_key():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(TEMPLATE, "config.ini"))
    assert list(parser[SECTION]) == [k.name for k in SCHEMA]
    lines = open(os.path.join(TEMPLATE, "config.ini")).read().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith(";"):
            assert lines[i - 1].startswith(";"), f"key without a comment: {line}"
    for key in SCHEMA:
        if key.extra:
            idx = next(i for i, ln in enumerate(lines) if ln.startswith(f"{key.name} ="))
            assert "beyond LMDeploy v0.1.0" in lines[idx - 1], key.name


def test_serve_script_and_readme():
    serve = os.path.join(TEMPLATE, "serve.sh")
    assert os.access(serve, os.X_OK)
    assert 'turbolm serve api_server "$(cd "$(dirname "$0")" && pwd)"' in open(serve).read()
    readme = open(os.path.join(TEMPLATE, "README.md")).read()
    for name in ("tok_embeddings.weight", "output.weight", "norm.weight", "attention_norm.weight", "ffn_norm.weight",
                 "w_qkv.r.weight", "w_qkv.r.bias", "wo.r.weight", "wo.r.bias", "w1.r.weight", "w2.r.weight",
                 "w3.r.weight", "past_kv_scale.r.weight", "int4"):
        assert name in readme, name
