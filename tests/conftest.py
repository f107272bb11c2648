"""Shared fixtures: tiny random-weight models and checkpoints built on the spot, nothing downloaded.

The tiny tokenizer and GPT-2 come from `bardterm.testing` (a pytest plugin every installed bardterm brings),
which the example plugins' tests use too; here they also go by their short names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bardterm.testing import TEXT, make_gpt2, make_llama, make_tokenizer  # noqa: F401 (tests import them from here)

REPO = Path(__file__).resolve().parent.parent
SHARED_CORPUS = REPO.parent / "shared" / "data" / "tiny_shakespeare" / "input.txt"


def tiny_train_args(data, out, *extra) -> list[str]:
    """`bardterm train` argv: a one-layer GPT-2 on `data` for 4 steps (seconds), for tests of training options."""
    return ["train", "--dataset", str(data), "--base", "scratch", "--preset", "tiny", "--n-layer", "1", "--n-embd",
            "32", "--vocab-size", "300", "--block-size", "32", "--batch-size", "4", "--max-steps", "4",
            "--eval-interval", "4", "--no-progress", "--output", str(out), *extra]


def train_plain_and_with(tmp_path, text: str, *option: str):
    """Train the tiny model of `tiny_train_args` on `text` twice, plain and with `option`: the final weights of
    each and the second run's bardterm.json."""
    import json

    from safetensors.torch import load_file

    from bardterm.cli import main

    data = tmp_path / "text.txt"
    data.write_text(text)
    assert main(tiny_train_args(data, tmp_path / "plain")) == 0
    assert main(tiny_train_args(data, tmp_path / "option", *option)) == 0
    plain, changed = (load_file(str(tmp_path / run / "last" / "model.safetensors")) for run in ("plain", "option"))
    return plain, changed, json.loads((tmp_path / "option" / "bardterm.json").read_text())


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run faster on one torch thread, and much faster than on two on a CPU shared with other jobs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_user_settings(tmp_path_factory, monkeypatch):
    """Tests never read the settings file of whoever runs them (a test that wants one sets its own)."""
    monkeypatch.setenv("BARDTERM_CONFIG", str(tmp_path_factory.getbasetemp() / "no-settings.toml"))


@pytest.fixture(autouse=True)
def torch_decode_steps(monkeypatch):
    """Tests run the decode steps written in PyTorch, whose logits are transformers' bit for bit; the native step
    (native_step.py: float32 sums in its own order) is tested in test_native_step.py, which turns it on."""
    monkeypatch.setenv("BARDTERM_NATIVE_STEP", "0")


@pytest.fixture(scope="session")
def tokenizer(tiny_tokenizer):
    """`bardterm.testing`'s tiny tokenizer, by its short name."""
    return tiny_tokenizer


@pytest.fixture(scope="session")
def gpt2(tiny_gpt2):
    return tiny_gpt2


@pytest.fixture(scope="session")
def llama(tokenizer):
    return make_llama(tokenizer)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer, gpt2):
    """A saved GPT-2 checkpoint directory (safetensors), as `bardterm train` would write one."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny"
    gpt2.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
