"""The lean Llama decode step (bardterm/fast_llama.py): the plain model's logits bit for bit, in every precision,
or None where it would not be exact."""

from __future__ import annotations

import pytest
import torch
from conftest import make_gpt2, make_llama
from transformers import DynamicCache

from bardterm import engine, precision
from bardterm.engine import Generation, cache_argument
from bardterm.fast_llama import llama_decode_step
from bardterm.kv_cache import preallocated_cache
from bardterm.registry import build

SHAPES = {  # GQA with 2 and 4 query heads per key-value head, plain multi-head; tied and untied heads
    "gqa2 untied": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2},
    "gqa4 tied": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1, "tie_word_embeddings": True},
    "mha tied": {"num_attention_heads": 2, "num_key_value_heads": 2, "tie_word_embeddings": True},
}


def in_precision(model, name: str):
    """As models.load_checkpoint does: load in the precision's float type, then apply it (int8's activations in
    bf16, as on a CPU with native bf16)."""
    choice = precision.Precision(name, "bfloat16" if name == "int8" else name)
    model = model.to(getattr(torch, choice.load_dtype))
    precision.apply(model, choice)
    return model


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16", "int8"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_lean_llama_step_gives_exactly_the_models_logits(tokenizer, shape, name):
    # the rotary table grows as the positions go (twice the positions seen), and past max_position_embeddings
    model = in_precision(make_llama(tokenizer, seed=3, max_position_embeddings=16, **SHAPES[shape]), name)
    if name == "int8":
        assert type(model.lm_head).__name__ == "Int8Linear"
    step = llama_decode_step(model)
    assert step is not None
    prompt = torch.tensor([tokenizer.encode("To be, or not")]).repeat(3, 1)  # three rows, as in beam search
    # room for 3 new positions: steps 1-3 append in place, the later ones make the cache grow
    ours, theirs = preallocated_cache(model, prompt.shape[1] + 3), DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=prompt, **{cache_argument(model): ours}, use_cache=True)
        model(input_ids=prompt, **{cache_argument(model): theirs}, use_cache=True)
        next_ids = torch.tensor([[5], [17], [42]])
        for _ in range(20 - prompt.shape[1]):
            fast = step(next_ids, ours)
            reference = model(input_ids=next_ids, **{cache_argument(model): theirs}, use_cache=True).logits[:, -1]
            assert torch.equal(fast, reference)
            next_ids = fast.float().argmax(dim=-1, keepdim=True)
    assert ours.get_seq_length() == theirs.get_seq_length() == 20


def test_the_lean_llama_step_is_only_used_where_it_is_exact(tokenizer, gpt2):
    assert llama_decode_step(gpt2) is None  # another architecture
    linear = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert llama_decode_step(make_llama(tokenizer, rope_parameters=linear)) is None  # scaled rotary positions
    eager = make_llama(tokenizer)
    eager.config._attn_implementation = "eager"
    assert llama_decode_step(eager) is None
    model = make_llama(tokenizer)
    handle = model.model.layers[1].mlp.register_forward_pre_hook(lambda *args: None)
    try:
        assert llama_decode_step(model) is None  # a hook must see every call
    finally:
        handle.remove()
    model.train()
    assert llama_decode_step(model) is None  # dropout on
    model.eval()
    model.model.layers[0].mlp.up_proj = torch.nn.Identity()  # a layer the step does not know
    assert llama_decode_step(model) is None
    assert llama_decode_step(make_llama(tokenizer)) is not None


def test_the_lean_llama_step_survives_a_forward_that_asked_for_hidden_states(tokenizer):
    model = make_llama(tokenizer)
    with torch.no_grad():  # as contrastive search does: transformers leaves its output-capturing hooks on the layers
        model(input_ids=torch.tensor([[3, 9]]), output_hidden_states=True)
    assert llama_decode_step(model) is not None


def generated_ids(model, tokenizer, decoder: str) -> list[int]:
    setup = build("beam", num_beams=3, chain=[]) if decoder == "beam" else build("greedy", chain=[])
    generation = Generation(model, tokenizer, "ROMEO:", setup, max_new_tokens=12, min_new_tokens=12)
    for _ in generation:
        pass
    return generation.result.token_ids


@pytest.mark.parametrize("name, decoder", [("float32", "greedy"), ("int8", "greedy"), ("float32", "beam")])
def test_the_engine_takes_the_lean_llama_step_and_gives_the_same_ids(tokenizer, monkeypatch, name, decoder):
    model = in_precision(make_llama(tokenizer, seed=4, **SHAPES["gqa2 untied"]), name)
    calls = []

    def counted(model):
        step = llama_decode_step(model)
        return lambda input_ids, cache: calls.append(input_ids.shape[0]) or step(input_ids, cache)

    monkeypatch.setattr(engine, "fast_decode_step", counted)
    lean = generated_ids(model, tokenizer, decoder)
    assert calls == [3 if decoder == "beam" else 1] * 11  # every token after the prompt's, all rows at once
    monkeypatch.setattr(engine, "fast_decode_step", lambda model: None)
    assert lean == generated_ids(model, tokenizer, decoder)


def test_fast_decode_step_picks_the_llama_step(tokenizer):
    from bardterm.decode_step import fast_decode_step

    assert fast_decode_step(make_llama(tokenizer)).__qualname__.startswith("llama_decode_step")
    assert fast_decode_step(make_gpt2(tokenizer)).__qualname__.startswith("gpt2_decode_step")
