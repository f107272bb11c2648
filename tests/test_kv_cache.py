"""The KV cache a selector gets from `run.forward`: its documented row methods (select, repeat, copy, crop), and
transformers' own `batch_repeat_interleave` / `batch_select_indices` / `reorder_cache` on it.

Every check compares logits with a plain transformers `DynamicCache` doing the same thing, and checks that the
buffers keep their size (transformers' own methods used to make it double on every step).
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from bardterm.engine import cache_argument
from bardterm.kv_cache import PreallocatedCache, PreallocatedLayer, preallocated_cache

PROMPT = torch.tensor([[5, 17, 33, 8, 61, 2]])


def step(model, ids, cache):
    with torch.no_grad():
        return model(input_ids=ids, **{cache_argument(model): cache}, use_cache=True).logits[:, -1].float()


def prefilled(model, capacity=64, prompt=PROMPT):
    """A preallocated cache and a plain one after the same prompt."""
    ours, plain = preallocated_cache(model, capacity), DynamicCache(config=model.config)
    step(model, prompt, ours)
    step(model, prompt, plain)
    return ours, plain


def sizes(cache) -> set:
    return {layer._buffers[0].shape[-2] for layer in cache.layers if isinstance(layer, PreallocatedLayer)}


@pytest.fixture(params=["gpt2", "llama"])
def model(request, tiny_gpt2, tiny_tokenizer):
    if request.param == "gpt2":
        return tiny_gpt2
    from bardterm.testing import make_llama

    return make_llama(tiny_tokenizer)


def test_it_is_the_cache_a_run_hands_out(tiny_gpt2):
    cache = preallocated_cache(tiny_gpt2, 32)
    assert isinstance(cache, PreallocatedCache) and isinstance(cache, DynamicCache)


@pytest.mark.parametrize("how", ["ours", "transformers"])
def test_repeat_rows_gives_every_candidate_the_same_past(model, how):
    ours, plain = prefilled(model)
    ours.repeat_rows(3) if how == "ours" else ours.batch_repeat_interleave(3)
    plain.batch_repeat_interleave(3)
    candidates = torch.tensor([[4], [9], [11]])
    assert torch.allclose(step(model, candidates, ours), step(model, candidates, plain), atol=1e-5)
    assert sizes(ours) == {64} and ours.get_seq_length() == PROMPT.shape[1] + 1


@pytest.mark.parametrize("how", ["ours", "transformers", "reorder"])
def test_select_rows_keeps_those_rows_in_that_order(model, how):
    ours, plain = prefilled(model, prompt=torch.tensor([[5, 17, 33], [8, 61, 2], [40, 41, 42]]))
    rows = torch.tensor([2, 0]) if how != "reorder" else torch.tensor([2, 0, 0])
    {"ours": ours.select_rows, "transformers": ours.batch_select_indices, "reorder": ours.reorder_cache}[how](rows)
    plain.batch_select_indices(rows)
    next_ids = torch.tensor([[7]] * len(rows))
    assert torch.allclose(step(model, next_ids, ours), step(model, next_ids, plain), atol=1e-5)
    assert sizes(ours) == {64}


def test_select_rows_takes_a_list():
    cache = PreallocatedCache()
    layer = PreallocatedLayer(16)
    cache.layers = [layer]
    layer.update(torch.arange(24.0).view(3, 1, 2, 4), torch.zeros(3, 1, 2, 4))
    cache.select_rows([1])
    assert cache.layers[0].keys.shape == (1, 1, 2, 4) and cache.layers[0].keys[0, 0, 0, 0] == 8.0


def test_a_contrastive_search_loop_with_transformers_methods_keeps_the_buffers_size(tiny_gpt2):
    """The loop that made the buffer double every step (107 -> 438,272 positions in 12 steps): repeat the row for
    k candidates, run them, keep one."""
    cache, _ = prefilled(tiny_gpt2, capacity=PROMPT.shape[1] + 13)
    for _ in range(12):
        cache.batch_repeat_interleave(4)
        step(tiny_gpt2, torch.tensor([[1], [2], [3], [4]]), cache)
        cache.batch_select_indices(torch.tensor([1]))
    assert sizes(cache) == {PROMPT.shape[1] + 13}
    assert cache.get_seq_length() == PROMPT.shape[1] + 12


def test_copy_is_an_independent_branch(model):
    ours, _ = prefilled(model)
    branch = ours.copy()
    assert isinstance(branch, PreallocatedCache)
    on_branch = step(model, torch.tensor([[9]]), branch)
    assert branch.get_seq_length() == PROMPT.shape[1] + 1 and ours.get_seq_length() == PROMPT.shape[1]
    assert torch.allclose(step(model, torch.tensor([[9]]), ours), on_branch, atol=1e-6)  # the original went on
    for layer in branch.layers:  # the branch's keys live in its own buffers, so appending stays in place
        if isinstance(layer, PreallocatedLayer):
            assert layer.fits(1)
    assert all(a._buffers[0].data_ptr() != b._buffers[0].data_ptr()
               for a, b in zip(ours.layers, branch.layers) if isinstance(a, PreallocatedLayer))


def test_crop_forgets_the_last_positions(model):
    ours, plain = prefilled(model)
    step(model, torch.tensor([[3]]), ours)
    ours.crop(-1)
    assert ours.get_seq_length() == PROMPT.shape[1]
    assert torch.allclose(step(model, torch.tensor([[9]]), ours), step(model, torch.tensor([[9]]), plain), atol=1e-5)
    assert sizes(ours) == {64}
