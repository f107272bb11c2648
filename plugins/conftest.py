"""Fixtures for the example plugins' tests: the same tiny random-weight models bardterm's own tests use.

A plugin kept outside this repository would copy `make_tokenizer` and `make_gpt2` from `tests/conftest.py`.
"""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bardterm_test_models", Path(__file__).resolve().parent.parent / "tests" / "conftest.py")
_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_models)


@pytest.fixture(scope="session")
def tokenizer():
    return _models.make_tokenizer()


@pytest.fixture(scope="session")
def gpt2(tokenizer):
    return _models.make_gpt2(tokenizer)
