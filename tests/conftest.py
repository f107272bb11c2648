"""Shared fixtures: tiny random-weight models and checkpoints built on the spot, nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_CORPUS = REPO.parent / "shared" / "data" / "tiny_shakespeare" / "input.txt"

TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "ROMEO:\nBut, soft! what light through yonder window breaks?\n"
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n"
    "Ünïcödé and emoji 🎭 so multi-byte characters split across tokens.\n"
)


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


def make_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer (GPT-2 style) trained on TEXT, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([TEXT] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")


def make_gpt2(tokenizer, seed: int = 0, n_positions: int = 128, n_embd: int = 32, n_layer: int = 2):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=2, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval()


def make_llama(tokenizer, seed: int = 0):
    """A model of another architecture (Llama: rotary positions, RMSNorm, gated MLP)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval()


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


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def gpt2(tokenizer):
    return make_gpt2(tokenizer)


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
