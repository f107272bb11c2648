"""Test fixtures for bardterm and its plugins: a pytest plugin, loaded by the `pytest11` entry point wherever
bardterm is installed, so a plugin's tests use these without a conftest.py of their own.

- `tiny_tokenizer`: a byte-level BPE tokenizer (GPT-2 style) trained on a few lines of Shakespeare on the spot.
- `tiny_gpt2`: a two-layer GPT-2 with random weights for it: the whole engine runs in well under a second.
- `register_plugin`: `register_plugin(module)` registers a plugin module with bardterm for this one test (as an
  installed plugin would be, API version and hooks checked) and returns the registry with it; it is
  unregistered after the test, pass or fail (the way simonw/llm's tests register theirs).

Tests never download anything. `make_tokenizer`, `make_gpt2` and `make_llama` build other sizes and seeds.
Importing this module does not import torch: pytest loads it in every run.
"""

from __future__ import annotations

import types

import pytest

TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "ROMEO:\nBut, soft! what light through yonder window breaks?\n"
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n"
    "Ünïcödé and emoji 🎭 so multi-byte characters split across tokens.\n"
)
"""What the tiny tokenizer is trained on."""


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
    """A GPT-2 with random weights (transformers' initialisation, from `torch.manual_seed(seed)`), in eval mode."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=2, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval()


def make_llama(tokenizer, seed: int = 0, **config):
    """A model of another architecture (Llama: rotary positions, RMSNorm, gated MLP); `config` overrides the
    LlamaConfig (heads, tie_word_embeddings, rope_parameters, ...)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                            "max_position_embeddings": 128, "bos_token_id": tokenizer.eos_token_id,
                            "eos_token_id": tokenizer.eos_token_id, **config})
    return LlamaForCausalLM(config).eval()


def plugin_module(name: str, source: str) -> types.ModuleType:
    """A plugin module made from Python source, for a test that writes its plugin inline."""
    module = types.ModuleType(name)
    exec(compile(source, f"<plugin {name}>", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_tokenizer):
    return make_gpt2(tiny_tokenizer)


@pytest.fixture
def register_plugin():
    """`register_plugin(module, name=None) -> Registry`: the plugin registered for this test only."""
    from bardterm import plugins
    from bardterm.registry import get_registry

    plugins.load_plugins()
    added: list[tuple] = []

    def register(module: types.ModuleType, name: str | None = None):
        manager = plugins.pm  # looked up now: a test may have swapped in a fresh plugin manager
        if not manager.is_registered(module):  # an installed plugin is registered already, and stays
            plugins.register_module(module, name or module.__name__)
            added.append((manager, module))
        return get_registry()

    yield register
    for manager, module in reversed(added):
        manager.unregister(module)
