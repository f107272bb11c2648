"""Precisions: bf16, fp16 and int8 give fp32's greedy text on a tiny model, int8 weights are int8 in memory,
`--dtype auto` chooses by the CPU's native support (mocked), and the lean step stays exact in each precision."""

import pytest
import torch
from conftest import make_gpt2, make_llama

from bardterm import precision
from bardterm.engine import Generation, cache_argument
from bardterm.errors import BardtermError
from bardterm.kv_cache import preallocated_cache
from bardterm.quantize import Int8Embedding, Int8Linear, quantize_int8, weight_bytes
from bardterm.registry import build

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX512_BF16 | {"amx_bf16", "avx512_fp16", "amx_fp16"}


@pytest.fixture
def flags(monkeypatch):
    """Set the CPU flags precision.py sees."""
    def set_flags(value):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(value))
    return set_flags


def peaked(model, gain: float = 8.0):
    """A random model whose next-token choices are clear-cut (logits spread over tens of nats, not a fraction
    of one), as a trained model's are: rounding a weight to bf16 or int8 must not flip a near tie."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(gain)
    return model


def in_precision(model, name: str):
    choice = precision.Precision(name, precision._activations(name, "cpu"))
    model = model.to(getattr(torch, choice.load_dtype))
    precision.apply(model, choice)
    return model


def greedy_ids(model, tokenizer, n: int = 12) -> list[int]:
    generation = Generation(model, tokenizer, "ROMEO:", build("greedy", chain=[]), max_new_tokens=n,
                            min_new_tokens=n)
    for _ in generation:
        pass
    return generation.result.token_ids


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("name", ["bfloat16", "float16", "int8"])
def test_each_precision_gives_fp32s_greedy_text(tokenizer, flags, arch, name):
    flags(AVX512_BF16)  # int8 then takes its bf16 kernel, as on this project's AVX-512 machines
    make = make_gpt2 if arch == "gpt2" else make_llama
    reference = greedy_ids(peaked(make(tokenizer, seed=4)), tokenizer)
    assert greedy_ids(in_precision(peaked(make(tokenizer, seed=4)), name), tokenizer) == reference


@pytest.mark.parametrize("name", ["bfloat16", "float16", "int8"])
def test_each_precision_keeps_the_logits_within_a_stated_tolerance(tokenizer, flags, name):
    # Tolerance: 3% of the logits' spread for bf16 (8 bits of mantissa) and int8 (127 levels per row);
    # fp16 (11 bits) is tighter.
    flags(AVX512_BF16)
    ids = torch.tensor([tokenizer.encode("To be, or not to be, that is the question")])
    with torch.no_grad():
        reference = make_gpt2(tokenizer, seed=1)(input_ids=ids).logits.float()
        ours = in_precision(make_gpt2(tokenizer, seed=1), name)(input_ids=ids).logits.float()
    spread = float(reference.max() - reference.min())
    limit = {"bfloat16": 0.03, "float16": 0.005, "int8": 0.03}[name]
    assert float((ours - reference).abs().max()) <= limit * spread


def test_int8_weights_are_int8_in_memory(tokenizer):
    model = make_gpt2(tokenizer, n_embd=64)
    fp32_bytes = weight_bytes(model)
    quantize_int8(model)
    linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 2 * 4 + 1  # 4 per block (qkv, attention out, MLP in and out) and the head
    assert all(m.weight.dtype == torch.int8 for m in linears)
    assert not [m for m in model.modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"]
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, Int8Embedding) and embedding.weight is model.lm_head.weight  # tied: stored once
    # What remains in float: layer norms, biases, scales and the position table. Measured, not assumed.
    floats = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]
                 if t.dtype != torch.int8)
    int8_bytes = sum(m.weight.numel() for m in linears)
    assert weight_bytes(model) == floats + int8_bytes
    assert weight_bytes(model) < 0.35 * fp32_bytes


@pytest.mark.parametrize("cpu, expected", [
    (AVX2_ONLY, "float32"),  # no native bf16: neither bf16 nor int8 (whose fast kernel needs bf16)
    (AVX512_BF16, "int8"),
    (SAPPHIRE_RAPIDS, "int8"),
    (AVX2_ONLY | {"avx512_fp16"}, "float16"),
])
def test_auto_picks_the_fastest_native_precision(flags, cpu, expected):
    flags(cpu)
    choice = precision.resolve("auto", "cpu")
    assert choice.name == expected and choice.auto and choice.label == f"{expected} (auto)"
    assert expected != "bfloat16" or precision.native_bf16()


def test_auto_never_picks_bf16_without_native_bf16_whatever_its_cost(flags, monkeypatch):
    flags(AVX2_ONLY)
    monkeypatch.setattr(precision, "COST_NATS_PER_CHAR", {"int8": 0.0, "bfloat16": 0.0, "float16": 0.0})
    assert precision.resolve("auto", "cpu").name == "float32"


def test_auto_skips_a_precision_that_costs_too_much(flags, monkeypatch):
    flags(AVX512_BF16)
    monkeypatch.setattr(precision, "COST_NATS_PER_CHAR", {**precision.COST_NATS_PER_CHAR, "int8": 0.02})
    assert precision.resolve("auto", "cpu").name == "bfloat16"


def test_explicit_precisions_and_aliases(flags):
    flags(AVX2_ONLY)
    assert precision.resolve(None, "cpu").name == "float32"
    assert precision.resolve("bf16", "cpu").name == "bfloat16"
    assert "not native" in precision.resolve("bf16", "cpu").note  # allowed when asked for, with a warning
    assert precision.resolve("int8", "cpu").load_dtype == "float32"  # no bf16 kernel: float activations
    flags(AVX512_BF16)
    assert precision.resolve("int8", "cpu").load_dtype == "bfloat16"
    with pytest.raises(BardtermError, match="invalid dtype 'int4'.*auto, float32, bfloat16, float16, int8"):
        precision.resolve("int4", "cpu")


def test_load_checkpoint_with_auto_reports_the_choice(tiny_checkpoint, flags):
    from bardterm.models import load_checkpoint

    flags(AVX512_BF16)
    loaded = load_checkpoint(tiny_checkpoint, device="cpu", dtype="auto")
    assert loaded.dtype == "int8" and loaded.dtype_label == "int8 (auto)" and "auto" in loaded.dtype_note
    assert isinstance(loaded.model.lm_head, Int8Linear)
    flags(AVX2_ONLY)
    loaded = load_checkpoint(tiny_checkpoint, device="cpu", dtype="auto")
    assert loaded.dtype_label == "float32 (auto)" and loaded.model.dtype == torch.float32


@pytest.mark.parametrize("name", ["float32", "bfloat16", "int8"])
def test_the_lean_step_gives_the_plain_models_logits_in_each_precision(tokenizer, flags, name):
    from transformers import DynamicCache

    from bardterm.fast_gpt2 import gpt2_decode_step

    flags(AVX512_BF16)
    model = in_precision(make_gpt2(tokenizer, seed=2), name)
    step = gpt2_decode_step(model)
    assert step is not None
    prompt = torch.tensor([tokenizer.encode("To be, or not")]).repeat(2, 1)
    ours, theirs = preallocated_cache(model, prompt.shape[1] + 8), DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=prompt, **{cache_argument(model): ours}, use_cache=True)
        model(input_ids=prompt, **{cache_argument(model): theirs}, use_cache=True)
        next_ids = torch.tensor([[5], [17]])
        for _ in range(4):
            fast = step(next_ids, ours)
            reference = model(input_ids=next_ids, **{cache_argument(model): theirs}, use_cache=True).logits[:, -1]
            assert torch.equal(fast, reference)
            next_ids = fast.float().argmax(dim=-1, keepdim=True)


def test_auto_on_a_gpu_takes_bf16_not_the_dequantizing_int8(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert precision.resolve("auto", "cuda").name == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert precision.resolve("auto", "cuda").name == "float16"


def test_generate_with_dtype_auto_says_what_it_chose(capsys, tiny_checkpoint, flags):
    from bardterm.cli import main

    flags(AVX512_BF16)
    assert main(["generate", "To be", "--checkpoint", str(tiny_checkpoint), "--dtype", "auto", "--decoder", "greedy",
                 "--max-new-tokens", "4"]) == 0
    err = capsys.readouterr().err
    assert "auto: int8, the fastest native precision on this cpu" in err


def test_a_bad_dtype_is_one_clear_line(capsys, tiny_checkpoint):
    from bardterm.cli import main

    assert main(["generate", "To be", "--checkpoint", str(tiny_checkpoint), "--dtype", "int4"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("bardterm: error:")] == [
        "bardterm: error: invalid dtype 'int4': use auto, float32, bfloat16, float16, int8"]


def test_eval_measures_what_a_precision_costs(tiny_checkpoint, capsys, tmp_path, flags):
    import json

    from bardterm.cli import main

    flags(AVX512_BF16)
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 40)
    figures = {}
    for dtype in ("float32", "int8"):
        assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--dataset", str(text), "--split", "validation",
                     "--dtype", dtype, "--json"]) == 0
        figures[dtype] = json.loads(capsys.readouterr().out)["splits"]["validation"]["nats_per_char"]
    assert figures["int8"] != figures["float32"]  # really evaluated in int8
    assert abs(figures["int8"] - figures["float32"]) < 0.01 * figures["float32"]


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_half_precision_keeps_gpt2s_weights_as_out_by_in_linear_layers(tokenizer, monkeypatch, name):
    from bardterm import packed

    monkeypatch.setattr(packed, "can_pack", lambda: False)  # bf16 without oneDNN's packed layers
    monkeypatch.setattr(precision, "native_fp16", lambda flags=None: True)  # fp16 layers not widened
    model = in_precision(make_gpt2(tokenizer), name)
    assert not [m for m in model.modules() if type(m).__name__ == "Conv1D"]
    attention = model.transformer.h[0].attn.c_attn
    assert type(attention) is torch.nn.Linear and attention.weight.shape == (3 * 32, 32)
    assert attention.weight.dtype == getattr(torch, name) and attention.weight.is_contiguous()


@pytest.mark.skipif(not __import__("bardterm.packed").packed.can_pack(), reason="no oneDNN bf16 on this CPU")
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bf16_layers_are_packed_once_and_give_the_same_numbers(tokenizer, arch):
    """packed.py: on a CPU with oneDNN bf16, every bf16 linear layer, a tied head included, holds its weight in
    oneDNN's layout (the embedding keeps its table), and the logits are bit for bit those of plain bf16 layers."""
    from bardterm import packed

    make = make_gpt2 if arch == "gpt2" else make_llama
    plain, packed_model = make(tokenizer), make(tokenizer)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(packed, "can_pack", lambda: False)
        plain = in_precision(plain, "bfloat16")
    packed_model = in_precision(packed_model, "bfloat16")
    kinds = [type(m).__name__ for m in packed_model.modules()]
    assert "PackedLinear" in kinds and "Linear" not in kinds  # a tied head too (a packed copy)
    embeddings = packed_model.get_input_embeddings()
    assert type(embeddings) is torch.nn.Embedding and embeddings.weight.dtype == torch.bfloat16
    ids = torch.tensor([tokenizer("To be, or not to be")["input_ids"]])
    assert torch.equal(plain(input_ids=ids).logits, packed_model(input_ids=ids).logits)
    assert greedy_ids(plain, tokenizer) == greedy_ids(packed_model, tokenizer)


@pytest.mark.parametrize("native_fp16", [False, True])
def test_fp16_layers_widen_several_rows_where_the_cpu_has_no_fp16(tokenizer, monkeypatch, native_fp16):
    """packed.py's WidenedLinear: without fp16 arithmetic, one row stays on the fp16 kernel (bit for bit plain
    fp16) and several rows are multiplied in float32 (within fp16's rounding of plain fp16's result)."""
    from bardterm.packed import WidenedLinear

    monkeypatch.setattr(precision, "native_fp16", lambda flags=None: native_fp16)
    model = in_precision(make_gpt2(tokenizer), "float16")
    layers = [m for m in model.modules() if isinstance(m, (WidenedLinear, torch.nn.Linear))]
    assert all(type(m) is (torch.nn.Linear if native_fp16 else WidenedLinear) for m in layers)
    if native_fp16:
        return
    layer = model.transformer.h[0].attn.c_attn
    one, rows = torch.randn(1, 1, 32).half(), torch.randn(1, 7, 32).half()
    plain = lambda x: torch.nn.functional.linear(x, layer.weight, layer.bias)  # noqa: E731
    assert torch.equal(layer(one), plain(one))
    torch.testing.assert_close(layer(rows), plain(rows), rtol=2e-3, atol=2e-3)
    assert layer(rows).dtype == torch.float16
