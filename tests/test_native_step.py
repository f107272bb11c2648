"""The native decode step (bardterm/native_step.py, native/cpu_step.cpp): the model's logits within float32
rounding in every precision, the same cache as the lean step leaves, the lean step wherever it cannot run, and a
build that fails with a reason instead of an error."""

from __future__ import annotations

import platform

import pytest
import torch
from conftest import make_gpt2, make_llama
from test_fast_llama import in_precision
from test_precision import greedy_ids, peaked

from bardterm import native_step, precision
from bardterm.engine import Generation, cache_argument
from bardterm.fast_gpt2 import gpt2_decode_step
from bardterm.fast_llama import llama_decode_step
from bardterm.kv_cache import preallocated_cache
from bardterm.models import load_checkpoint
from bardterm.registry import build

PRECISIONS = ["float32", "bfloat16", "float16", "int8"]
# Largest logit difference from the lean step, relative to the largest logit. float32 differs only in the order
# of additions; the others also because the lean step rounds activations to bf16/fp16 after each op and the
# native step keeps them in float32 (measured on these models: fp32 7e-7, fp16 7e-4, bf16 and int8 6e-3-7e-3).
TOLERANCE = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 3e-2, "int8": 3e-2}
MODELS = {
    "gpt2": lambda tokenizer: make_gpt2(tokenizer, seed=1, n_embd=64, n_layer=2),
    "llama gqa": lambda tokenizer: make_llama(tokenizer, seed=2, hidden_size=64, num_attention_heads=4,
                                              num_key_value_heads=2),
    "llama tied": lambda tokenizer: make_llama(tokenizer, seed=3, hidden_size=48, num_attention_heads=3,
                                               num_key_value_heads=3, tie_word_embeddings=True),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The compiled step, built here into a temporary cache folder: the build itself is under test, and the
    user's cache folder is not touched."""
    patch = pytest.MonkeyPatch()
    patch.setenv("BARDTERM_NATIVE_STEP", "1")
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    for name in ("_library", "_build", "_build_error"):
        setattr(native_step, name, None)
    found = native_step.library(wait=True)
    if found is None and "no C++ compiler" in (native_step.build_error() or ""):
        patch.undo()
        pytest.skip(native_step.build_error())
    assert found is not None, native_step.build_error()
    yield found
    patch.undo()


@pytest.fixture
def native(built, monkeypatch):
    monkeypatch.setenv("BARDTERM_NATIVE_STEP", "1")
    return built


def lean_and_native(model):
    lean = (gpt2_decode_step if model.config.model_type == "gpt2" else llama_decode_step)(model)
    return lean, native_step.native_decode_step(model, lean)


def greedy_text(model, tokenizer, prompt: str, tokens: int) -> str:
    generation = Generation(model, tokenizer, prompt, build("greedy"), max_new_tokens=tokens)
    for _ in generation:
        pass
    return generation.result.text


def follow(model, tokenizer, fast, lean, steps: int, tolerance: float):
    """Decode `steps` tokens after one prompt with both steps, each in its own cache, feeding both the lean step's
    greedy choice; every native logit within `tolerance` (relative to the largest). Returns (ours, theirs) caches."""
    prompt = torch.tensor([tokenizer.encode("To be, or not")])
    ours, theirs = prefilled(model, prompt, 40), prefilled(model, prompt, 40)
    ids = torch.tensor([[5]])
    with torch.no_grad():
        for _ in range(steps):
            got, expected = fast(ids, ours), lean(ids, theirs).float()
            assert got.dtype == torch.float32 and got.shape == expected.shape
            assert (got - expected).abs().max() <= tolerance * expected.abs().max()
            ids = expected.argmax(-1, keepdim=True)
    return ours, theirs


def prefilled(model, prompt, capacity):
    cache = preallocated_cache(model, capacity)
    with torch.no_grad():
        model(input_ids=prompt, **{cache_argument(model): cache}, use_cache=True)
    return cache


@pytest.mark.parametrize("name", PRECISIONS)
@pytest.mark.parametrize("architecture", list(MODELS))
def test_the_native_step_gives_the_models_logits(native, tokenizer, architecture, name):
    model = in_precision(MODELS[architecture](tokenizer), name)
    lean, fast = lean_and_native(model)
    assert fast is not None and fast is not lean
    prompt = torch.tensor([tokenizer.encode("To be, or not")])
    ours, theirs = follow(model, tokenizer, fast, lean, 24, TOLERANCE[name])
    assert ours.get_seq_length() == theirs.get_seq_length() == prompt.shape[1] + 24
    for mine, reference in zip(ours.layers, theirs.layers):  # the keys and values it wrote, where it wrote them
        assert mine.keys.data_ptr() == mine._buffers[0].data_ptr()
        torch.testing.assert_close(mine.keys.float(), reference.keys.float(), rtol=0.02, atol=0.02)
        torch.testing.assert_close(mine.values.float(), reference.values.float(), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("name", ["bfloat16", "float16", "int8"])
def test_each_precision_gives_fp32s_greedy_text_natively(native, tokenizer, architecture, name):
    """test_precision.py's check, with the native step on for both (the model made clear-cut, as a trained one is)."""
    make = make_gpt2 if architecture == "gpt2" else make_llama
    reference = greedy_ids(peaked(make(tokenizer, seed=4)), tokenizer)
    assert greedy_ids(in_precision(peaked(make(tokenizer, seed=4)), name), tokenizer) == reference


def test_one_thread_or_two_the_same_logits(native, tokenizer):
    """Each output row is summed by one thread, in the same order whatever the number of threads."""
    model = MODELS["gpt2"](tokenizer)
    _, fast = lean_and_native(model)
    prompt = torch.tensor([tokenizer.encode("To be, or not")])
    cache = prefilled(model, prompt, 20)  # once: PyTorch's own prompt pass may sum differently on two threads
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(fast(torch.tensor([[7]]), cache.copy()))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(*results)


def test_threads_drop_to_one_while_one_is_faster_and_come_back():
    choice = native_step.ThreadChoice()
    seen = []

    def steps(count, seconds):  # seconds(threads): how long a step takes on that many threads
        for _ in range(count):
            threads = choice.threads(2)
            seen.append(threads)
            choice.took(threads, 2, seconds(threads))

    steps(50, lambda threads: 1.0 if threads == 2 else 1.6)  # quiet: two threads, nothing tried
    assert set(seen) == {2}
    seen.clear()
    steps(100, lambda threads: 3.0 if threads == 2 else 1.6)  # the other core taken: one thread, trying two now and then
    assert seen.count(2) <= 1 + 100 // native_step.ThreadChoice.RETRY_EVERY + 1 and seen[-1] == 1
    seen.clear()
    steps(40, lambda threads: 1.0 if threads == 2 else 1.6)  # quiet again: back on two within one retry
    assert seen[-5:] == [2] * 5
    one = native_step.ThreadChoice()
    assert one.threads(1) == 1


def test_the_lean_step_runs_what_the_native_step_cannot(native, tokenizer):
    model = MODELS["gpt2"](tokenizer)
    lean, fast = lean_and_native(model)
    prompt = torch.tensor([tokenizer.encode("To be, or not")])
    # several rows (beam search, a batched compare): the lean step, bit for bit
    rows = prompt.repeat(3, 1)
    ours, theirs = prefilled(model, rows, 30), prefilled(model, rows, 30)
    ids = torch.tensor([[5], [6], [7]])
    assert torch.equal(fast(ids, ours), lean(ids, theirs))
    # a full cache: the lean step grows it; the native step then goes on in the new buffers
    ours, theirs = prefilled(model, prompt, prompt.shape[1] + 1), prefilled(model, prompt, prompt.shape[1] + 1)
    ids = torch.tensor([[5]])
    for _ in range(4):
        got, expected = fast(ids, ours), lean(ids, theirs)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert ours.get_seq_length() == prompt.shape[1] + 4
    # past GPT-2's last position embedding: the lean step's own error, not a read past the table
    short = make_gpt2(tokenizer, seed=1, n_embd=64, n_layer=2, n_positions=prompt.shape[1] + 2)
    lean, fast = lean_and_native(short)
    cache = prefilled(short, prompt, 40)
    with torch.no_grad():
        fast(ids, cache), fast(ids, cache)
        with pytest.raises((IndexError, RuntimeError)):
            fast(ids, cache)


def test_layers_it_does_not_know_leave_it_to_the_lean_step(native, tokenizer):
    model = MODELS["gpt2"](tokenizer)
    model.transformer.h[0].mlp.act = torch.nn.ReLU()  # not GPT-2's gelu_new
    assert native_step.native_decode_step(model, lambda *a: None) is None
    assert native_step.native_decode_step(MODELS["gpt2"](tokenizer), None) is None  # no lean step: no native
    model = MODELS["gpt2"](tokenizer)
    model.transformer.h[1].attn.scaling /= 2  # as scale_attn_by_inverse_layer_idx does: a scale per layer
    assert native_step.native_decode_step(model, lambda *a: None) is None


def test_off_when_asked(native, tokenizer, monkeypatch):
    monkeypatch.setenv("BARDTERM_NATIVE_STEP", "0")
    model = MODELS["gpt2"](tokenizer)
    lean, fast = lean_and_native(model)
    assert fast is None


def test_bardterms_own_gpt2_runs_natively_and_generates_the_same_text(native, tiny_checkpoint, monkeypatch):
    loaded = load_checkpoint(tiny_checkpoint, device="cpu")
    assert type(loaded.model).__module__ == "bardterm.gpt2"
    lean, fast = lean_and_native(loaded.model)
    assert fast is not None
    texts = []
    for setting in ("1", "0"):
        monkeypatch.setenv("BARDTERM_NATIVE_STEP", setting)
        texts.append(greedy_text(loaded.model, loaded.tokenizer, "ROMEO:", 24))
    assert texts[0] == texts[1]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 vector builds")
@pytest.mark.parametrize("isa, flags", [("avx2", ["-mavx2", "-mfma", "-mf16c"]), ("scalar", [])])
def test_the_avx2_and_plain_cpp_builds_give_the_same_logits(native, tokenizer, tmp_path, isa, flags):
    """The paths other machines take (AVX2-only AMD, or no vector path at all), built and run here."""
    target = tmp_path / f"{isa}.so"
    assert native_step.compile_library(target, [*native_step.BASE_FLAGS, *flags]) is None
    other = native_step.open_library(target)
    assert other.bardterm_vector_isa().decode() == isa
    for architecture, name in (("gpt2", "float32"), ("gpt2", "float16"), ("llama gqa", "bfloat16"),
                               ("llama tied", "int8")):
        model = in_precision(MODELS[architecture](tokenizer), name)
        lean = lean_and_native(model)[0]
        follow(model, tokenizer, native_step.native_decode_step(model, lean, other), lean, 8, TOLERANCE[name])


def test_a_failed_build_says_why_and_the_lean_step_runs(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("BARDTERM_NATIVE_STEP", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no build there yet
    monkeypatch.setenv("CXX", "false")  # a compiler that always fails
    for name, value in (("_library", None), ("_build", None), ("_build_error", None)):
        monkeypatch.setattr(native_step, name, value)
    assert native_step.library(wait=True) is None
    assert native_step.build_error() == "false failed: exit status 1"
    model = MODELS["gpt2"](tokenizer)
    lean, fast = lean_and_native(model)
    assert fast is None
    assert not any(tmp_path.rglob("*.so*"))  # nothing half-written left behind


def test_a_build_is_kept_per_source_and_cpu(native, monkeypatch, tmp_path_factory):
    path = native_step.library_path()
    assert path.exists() and path.suffix == ".so" and tmp_path_factory.getbasetemp() in path.parents
    monkeypatch.setattr(native_step, "FLAGS", [*native_step.FLAGS, "-DOTHER"])
    assert native_step.library_path() != path
    monkeypatch.undo()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma", "f16c"}))  # another machine
    assert native_step.library_path() != path
