"""Fixtures of the lite tests: a short slice of real text (tokenizing all of WikiText-2 would
dominate the run time) and single-threaded torch (the tests run beside other jobs)."""
import os

import pytest
import torch

from tests.fixtures.tiny_models import DATA_DIR


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def calib_txt(tmp_path_factory):
    """The first 40k characters of WikiText-2 test as a .txt calibration file."""
    with open(os.path.join(DATA_DIR, "wikitext2-test.txt"), encoding="utf-8") as f:
        text = f.read(40000)
    path = tmp_path_factory.mktemp("calib") / "wikitext2-head.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)
