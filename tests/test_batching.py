"""Lockstep batches (compare mode): one model pass per step for every setup, the same tokens as running apart."""

import functools

import pytest
import torch

import bardterm.engine
from bardterm.batching import BatchedGeneration, lockstep, run_all
from bardterm.decoders.base import Processor
from bardterm.engine import DecoderFault, Generation, generate
from bardterm.registry import build
from bardterm.testing import make_gpt2, make_llama

PROMPT = "To be, or not to be"
# Greedy, and seeded sampling with a different chain each: what a person compares.
SETUPS = [({"decoder": "greedy", "chain": []}, None), ({"decoder": "sample", "temperature": 0.8}, 1),
          ({"decoder": "sample", "top_p": 0.9}, 2), ({"decoder": "sample", "top_k": 20, "temperature": 1.3}, 3)]


def sharpened(model):
    """At transformers' initialisation a tiny model hardly looks back (greedy says " be" thirty times): with its
    matrices scaled up every token depends on the ones before, so a row handed another row's cache shows."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(8)
    return model


@pytest.fixture(scope="module")
def models(tokenizer):
    return {"gpt2": sharpened(make_gpt2(tokenizer, seed=1)), "llama": sharpened(make_llama(tokenizer, seed=1))}


@pytest.fixture(scope="module")
def gpt2(models):
    return models["gpt2"]


def generations(model, tokenizer, setups=SETUPS, **options):
    return [Generation(model, tokenizer, PROMPT, build(**settings), seed=seed, **options) for settings, seed in setups]


def finish(generation):
    for _ in generation:
        pass
    return generation.result


def apart(model, tokenizer, setups=SETUPS, **options):
    return [finish(generation) for generation in generations(model, tokenizer, setups, **options)]


def count_passes(monkeypatch, model) -> list[int]:
    """Record the rows of every call to the model and to its lean decode step: one entry per model pass."""
    rows = []
    real_forward, real_step = model.forward, bardterm.engine.fast_decode_step

    @functools.wraps(real_forward)
    def forward(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return real_forward(*args, **kwargs)

    def fast_decode_step(model):
        step = real_step(model)
        return None if step is None else lambda ids, cache: rows.append(ids.shape[0]) or step(ids, cache)

    monkeypatch.setattr(model, "forward", forward)  # an instance attribute: the lean step sees no hooks
    monkeypatch.setattr(bardterm.engine, "fast_decode_step", fast_decode_step)
    return rows


class Record(Processor):
    """First in the chain: keeps the scores it is handed, to compare the shared pass's logits with batch 1's."""

    name = "record_test"
    order = 0

    def __init__(self):
        super().__init__()
        self.seen = []

    def __call__(self, input_ids, scores):
        self.seen.append(scores.clone())
        return scores


class EndAt(Processor):
    """Leaves only EOS possible from step `step` on: a row that ends with EOS when we choose."""

    name = "end_at_test"

    def __init__(self, step):
        super().__init__()
        self.step = step

    def __call__(self, input_ids, scores):
        if self.run.step < self.step:
            return scores
        eos = next(iter(self.run.eos_token_ids))
        return torch.full_like(scores, -float("inf")).index_fill(1, torch.tensor([eos]), 0.0)


class CancelAt(Processor):
    """Cancels its generation at step `step`, as the user's Escape would."""

    name = "cancel_at_test"

    def __init__(self, step):
        super().__init__()
        self.step, self.generation = step, None

    def __call__(self, input_ids, scores):
        if self.run.step == self.step:
            self.generation.cancel()
        return scores


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_batched_gives_the_same_tokens_as_running_apart(models, tokenizer, name, monkeypatch):
    model = models[name]
    expected = apart(model, tokenizer, max_new_tokens=40)
    rows = count_passes(monkeypatch, model)
    results = run_all(generations(model, tokenizer, max_new_tokens=40))
    assert [r.token_ids for r in results] == [r.token_ids for r in expected]
    assert [r.text for r in results] == [r.text for r in expected]
    assert all(r.stop_reason == "length" and r.stats.tokens == 40 for r in results)
    assert len({tuple(r.token_ids) for r in results}) == 4  # four different texts: the setups really differ
    assert rows == [1] + [4] * 39  # the prompt once for all, then one pass of four rows per token
    first_tokens = [r.stats.ttft_s for r in results]  # each row's clock starts with the batch (and its prompt pass)
    assert first_tokens == sorted(first_tokens) and all(r.stats.total_s > r.stats.ttft_s for r in results)


def test_bardterms_own_gpt2_batches_too(tmp_path, models, tokenizer, monkeypatch):
    from bardterm.models import load_checkpoint

    models["gpt2"].save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_checkpoint(tmp_path, device="cpu")  # a plain GPT-2 checkpoint loads as bardterm's own model
    assert type(loaded.model).__module__ == "bardterm.gpt2"
    expected = apart(loaded.model, loaded.tokenizer, max_new_tokens=20)
    rows = count_passes(monkeypatch, loaded.model)
    results = run_all(generations(loaded.model, loaded.tokenizer, max_new_tokens=20))
    assert [r.token_ids for r in results] == [r.token_ids for r in expected]
    assert rows == [1] + [4] * 19


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_row_sees_the_logits_it_would_see_alone(models, tokenizer, name):
    # Batched matrix products round differently from batch 1: here by up to 2e-6 on logits up to 4.5, so 1e-5.
    model = models[name]
    recorded = []
    for batched in (False, True):
        setups = [build("greedy", chain=[]), build("sample", temperature=0.8)]
        records = [Record() for _ in setups]
        for setup, record in zip(setups, records):
            setup.chain.insert(0, record)
        rows = [Generation(model, tokenizer, PROMPT, setup, seed=5, max_new_tokens=20) for setup in setups]
        if batched:
            run_all(rows)
        else:
            [finish(row) for row in rows]
        recorded.append([torch.cat(record.seen) for record in records])
    for alone, together in zip(*recorded):
        assert alone.shape == together.shape == (20, len(tokenizer))
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def test_a_row_that_ends_drops_out_and_the_others_go_on(gpt2, tokenizer, monkeypatch):
    full = generate(gpt2, tokenizer, PROMPT, build("sample", temperature=0.8), max_new_tokens=30, seed=7).text
    stop = next(full[i:i + 2] for i in range(len(full) // 2, len(full)) if full.find(full[i:i + 2]) == i)

    def rows():
        ends_on_eos, cancels = build("sample", temperature=0.8), build("sample", top_p=0.9)
        ends_on_eos.chain.append(EndAt(6))
        cancels.chain.append(CancelAt(9))
        made = [Generation(gpt2, tokenizer, PROMPT, build("sample", temperature=0.8), max_new_tokens=30, seed=7,
                           stop=[stop]),
                Generation(gpt2, tokenizer, PROMPT, build("greedy", chain=[]), max_new_tokens=4),
                Generation(gpt2, tokenizer, PROMPT, ends_on_eos, max_new_tokens=30, seed=1),
                Generation(gpt2, tokenizer, PROMPT, cancels, max_new_tokens=30, seed=2)]
        cancels.chain[-1].generation = made[3]
        return made

    expected = [finish(row) for row in rows()]
    passes = count_passes(monkeypatch, gpt2)
    results = run_all(rows())
    assert [r.stop_reason for r in results] == ["stop", "length", "eos", "cancelled"]
    assert [len(r.token_ids) for r in results[1:]] == [4, 7, 10]
    assert results[0].text == full[:full.index(stop)] and len(results[0].token_ids) > 10
    assert [r.token_ids for r in results] == [r.token_ids for r in expected]  # each row keeps its own cache row
    # Four rows until the shortest has its 4 tokens, then three until EOS at the 7th, two until the cancel at
    # the 10th, and the last row alone to its stop string.
    assert passes[:10] == [1, 4, 4, 4, 3, 3, 3, 2, 2, 2] and set(passes[10:]) == {1}


@pytest.mark.parametrize("selector", ["beam", "contrastive"])
def test_a_search_of_its_own_runs_apart(gpt2, tokenizer, selector):
    setups = [({"decoder": "greedy", "chain": []}, None), ({"decoder": selector}, None), SETUPS[1]]
    expected = apart(gpt2, tokenizer, setups, max_new_tokens=16)
    rows = generations(gpt2, tokenizer, setups, max_new_tokens=16)
    assert [type(row) is BatchedGeneration for row in lockstep(rows)] == [True, False, True]
    rows = generations(gpt2, tokenizer, setups, max_new_tokens=16)
    assert [r.token_ids for r in run_all(rows)] == [r.token_ids for r in expected]


def test_generations_of_different_prompts_run_apart(gpt2, tokenizer):
    rows = [Generation(gpt2, tokenizer, prompt, build("greedy"), max_new_tokens=4) for prompt in ("To be", "Romeo")]
    assert lockstep(rows) == rows
    assert [r.token_ids for r in run_all(rows)] == [generate(gpt2, tokenizer, p, build("greedy"), max_new_tokens=4)
                                                    .token_ids for p in ("To be", "Romeo")]


class Broken(Processor):
    """A plugin's bug at step `step`."""

    name = "broken_test"

    def __init__(self, step):
        super().__init__()
        self.step = step

    def __call__(self, input_ids, scores):
        if self.run.step == self.step:
            raise ValueError("oops")
        return scores


def test_a_faulty_row_fails_alone(gpt2, tokenizer):
    expected = apart(gpt2, tokenizer, SETUPS[:3], max_new_tokens=12)
    rows = generations(gpt2, tokenizer, SETUPS[:3], max_new_tokens=12)
    rows[1].setup.chain.append(Broken(5))
    failed = []
    for row in lockstep(rows):
        try:
            finish(row)
        except DecoderFault as error:
            failed.append(str(error))
    assert failed == ["decoder 'broken_test' raised ValueError: oops"]
    assert rows[1].result is None
    assert [rows[i].result.token_ids for i in (0, 2)] == [expected[i].token_ids for i in (0, 2)]
