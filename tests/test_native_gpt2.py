"""bardterm's own GPT-2 (`gpt2.py`, `tokenizer.py`, `kv_buffers.py`): the same logits, tokens and text as
transformers' classes on the same checkpoint, without importing transformers; anything else falls back."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from bardterm.engine import Generation
from bardterm.models import SHIPPED_CHECKPOINT, load_checkpoint
from bardterm.registry import build

TEXTS = ["To be, or not to be", "", "ROMEO:\nBut, soft! what light", "naïve café — ünïcode ✓", "a  b\t\n c<|endoftext|>d"]


@pytest.fixture(scope="module")
def both(tiny_checkpoint):
    """The tiny checkpoint loaded twice: bardterm's own classes, and transformers'."""
    native = load_checkpoint(tiny_checkpoint, device="cpu")
    reference = load_checkpoint(tiny_checkpoint, device="cpu", native=False)
    assert type(native.model).__module__ == "bardterm.gpt2"
    assert type(reference.model).__name__ == "GPT2LMHeadModel"
    return native, reference


def test_the_same_logits_and_hidden_states_as_transformers(both):
    native, reference = both
    ids = torch.tensor([native.tokenizer.encode("To be, or not to be, that is the question")] * 2)
    ours = native.model(input_ids=ids, output_hidden_states=True)
    theirs = reference.model(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=0, atol=1e-6)
    assert len(ours.hidden_states) == len(theirs.hidden_states)
    for a, b in zip(ours.hidden_states, theirs.hidden_states):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_logits_to_keep_gives_the_last_positions_logits(both):
    native, reference = both
    ids = torch.tensor([native.tokenizer.encode("To be, or not to be, that is the question")])
    whole = native.model(input_ids=ids).logits
    for keep in (1, 3):
        kept = native.model(input_ids=ids, logits_to_keep=keep).logits
        assert kept.shape[1] == keep
        torch.testing.assert_close(kept, whole[:, -keep:], rtol=0, atol=1e-6)
        torch.testing.assert_close(kept, reference.model(input_ids=ids, logits_to_keep=keep).logits, rtol=0, atol=1e-6)


def test_positions_after_a_cache_see_what_they_should(both):
    """Several new positions after a cached prefix (the explicit-mask path) equal one pass over the whole."""
    native, _ = both
    ids = torch.tensor([native.tokenizer.encode("ROMEO:\nBut, soft! what light through yonder")])
    whole = native.model(input_ids=ids).logits
    cache = native.model.new_cache(ids.shape[1])
    first = native.model(input_ids=ids[:, :5], past_key_values=cache).logits
    rest = native.model(input_ids=ids[:, 5:], past_key_values=cache).logits
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("decoder, settings", [
    ("greedy", {}), ("creative", {"seed": 7}), ("beam", {"num_beams": 3}), ("contrastive", {}),
])
def test_every_selector_gives_transformers_tokens(both, decoder, settings):
    """Greedy (the lean step), sampling (the processors), beam search (reorder_cache) and contrastive search
    (repeat_rows, select_rows, hidden states) over bardterm's cache give the tokens they give on transformers'."""
    seed = settings.pop("seed", None)
    results = []
    for loaded in both:
        generation = Generation(loaded.model, loaded.tokenizer, "To be", build(decoder, **settings),
                                max_new_tokens=12, seed=seed)
        for _ in generation:
            pass
        results.append((generation.result.token_ids, generation.result.text))
    assert results[0] == results[1]


def test_the_tokenizer_matches_transformers(both):
    native, reference = both
    ours, theirs = native.tokenizer, reference.tokenizer
    assert (len(ours), ours.eos_token_id, ours.bos_token_id) == (len(theirs), theirs.eos_token_id, theirs.bos_token_id)
    for text in TEXTS:
        ids = theirs(text)["input_ids"]
        assert ours(text)["input_ids"] == ids
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == theirs.encode(text, add_special_tokens=special)
        assert torch.equal(ours(text, return_tensors="pt")["input_ids"], theirs(text, return_tensors="pt")["input_ids"])
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
        assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
    pieces = [[i] for i in range(len(ours))]
    assert ours.batch_decode(pieces) == theirs.batch_decode(pieces, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("name", ["bfloat16", "float16", "int8"])
def test_each_precision_applies_to_the_native_model(tiny_checkpoint, name):
    native = load_checkpoint(tiny_checkpoint, device="cpu", dtype=name)
    reference = load_checkpoint(tiny_checkpoint, device="cpu", dtype=name, native=False)
    assert type(native.model).__module__ == "bardterm.gpt2"
    kinds = lambda model: sorted({type(m).__name__ for m in model.modules() if type(m).__name__ in  # noqa: E731
                                  ("Conv1D", "Linear", "Int8Linear", "Int8Embedding")})
    assert kinds(native.model) == kinds(reference.model)
    ids = torch.tensor([native.tokenizer.encode("To be, or not to be")])
    torch.testing.assert_close(native.model(input_ids=ids).logits, reference.model(input_ids=ids).logits,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("change, reason", [
    (lambda path: _edit(path / "config.json", activation_function="relu"), "activation"),
    (lambda path: _edit(path / "tokenizer_config.json", chat_template="{{ messages }}"), "chat_template"),
    (lambda path: _edit(path / "tokenizer_config.json", add_bos_token=True), "add_bos_token"),
    (lambda path: (path / "tokenizer.json").unlink(), "tokenizer.json"),
])
def test_what_it_does_not_cover_loads_through_transformers(tiny_checkpoint, tmp_path, change, reason):
    from bardterm.models import why_not_native

    path = shutil.copytree(tiny_checkpoint, tmp_path / "changed")
    change(path)
    assert reason in why_not_native(path, json.loads((path / "config.json").read_text()))
    if reason != "tokenizer.json":  # (transformers can rebuild that one only from vocab files)
        assert type(load_checkpoint(path, device="cpu").model).__name__ == "GPT2LMHeadModel"


def test_weights_without_the_transformer_prefix_load_through_transformers(tiny_checkpoint, tmp_path):
    """The original GPT-2 checkpoints on the Hub name their weights as GPT2Model saves them ("h.0.attn...")."""
    from safetensors.torch import load_file, save_file

    from bardterm.models import why_not_native

    path = shutil.copytree(tiny_checkpoint, tmp_path / "bare")
    weights = load_file(path / "model.safetensors")
    save_file({name.removeprefix("transformer."): tensor for name, tensor in weights.items()},
              path / "model.safetensors", metadata={"format": "pt"})
    assert "GPT2Model" in why_not_native(path, json.loads((path / "config.json").read_text()))
    loaded = load_checkpoint(path, device="cpu")
    assert type(loaded.model).__name__ == "GPT2LMHeadModel"


def test_a_llama_checkpoint_loads_through_transformers(tmp_path, tokenizer, llama):
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    assert type(load_checkpoint(tmp_path / "llama", device="cpu").model).__name__ == "LlamaForCausalLM"


def test_generating_from_the_shipped_model_never_imports_transformers():
    """The point of it all: start-up without transformers' second and a half of imports."""
    script = ("import sys; from bardterm.cli import main; code = main(['generate', 'ROMEO:', '--max-new-tokens', '4',"
              " '--seed', '1']); assert 'transformers' not in sys.modules, 'transformers was imported'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (SHIPPED_CHECKPOINT / "model.safetensors").is_file()


def _edit(file, **changes):
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


def test_the_reader_gives_safetensors_own_tensors_in_any_type(tiny_checkpoint):
    from safetensors.torch import load_file

    from bardterm.gpt2 import read_safetensors

    file = tiny_checkpoint / "model.safetensors"
    expected = load_file(file)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        ours = read_safetensors(file, list(expected), dtype)
        assert all(torch.equal(ours[name], tensor.to(dtype)) for name, tensor in expected.items())
    with pytest.raises(ValueError, match="lacks nothing.here"):
        read_safetensors(file, ["nothing.here"], torch.float32)
