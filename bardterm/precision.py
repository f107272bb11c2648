"""Precisions a model can run in: float32, bfloat16, float16, int8 (weight-only), and `auto`.

    choice = resolve("auto", "cpu")        # Precision("int8", ...) on a CPU with native bf16, else float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=choice.load_dtype)
    apply(model, choice)                    # int8: every linear layer's weights become int8 in place

On a batch-1 decode the CPU spends its time reading weights (distilgpt2's 82M parameters are 330 MB in fp32,
more than the caches hold), so halving or quartering the bytes read is the speed-up llama.cpp gets from f16 and
q8_0. int8 here is weight-only: per-output-channel scales, symmetric, and the activations stay in a float
type, through PyTorch's own `_weight_int8pack_mm` kernel (the one torchao's int8 weight-only path calls on
the CPU). That kernel is fast only with bfloat16 activations (measured on a 2-core AMD EPYC with avx512_bf16,
one thread: distilgpt2's 50257x768 head 9.6 ms fp32, 4.9 ms bf16, 2.6 ms int8 with bf16 activations, 94 ms
int8 with fp32 activations), so int8 runs its activations in bfloat16 where the CPU has native bf16, and
dequantizes each weight on the fly elsewhere (correct but slow: `auto` never picks it there).

That is the kernel for prompts and batches; one token at a time on the CPU goes through the native step
(native_step.py), whose int8 kernel widens the weights to float32 as it reads them, with any activations.

`auto` takes the first of int8, bfloat16, float16, float32 that this device computes natively and whose cost
on the shipped model, measured with `bardterm eval` and kept in COST_NATS_PER_CHAR, is under 0.01 nats/char.
On a CPU without native bf16 (AVX2-only machines), neither bf16 nor int8 is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from bardterm.errors import BardtermError

CHOICES = ("auto", "float32", "bfloat16", "float16", "int8")
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "q8": "int8"}
MAX_COST_NATS_PER_CHAR = 0.01

# Extra nats/char over float32 on the shipped checkpoint's validation split, measured with `bardterm eval
# --dtype D` (float32: 1.343157; bf16 -0.000007, fp16 +0.000003, int8 +0.000165; the checkpoint is stored in
# fp16). Recorded with the speeds in benchmarks/results/llamacpp_speed.txt. `auto` takes only what is listed.
COST_NATS_PER_CHAR = {"float32": 0.0, "bfloat16": 0.0, "float16": 0.0, "int8": 0.0002}

# Fastest first, for a batch-1 decode whose time goes to reading weights.
SPEED_ORDER = ("int8", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Precision:
    name: str  # float32, bfloat16, float16 or int8
    load_dtype: str  # the float type the model is loaded in (int8: its activations' type)
    auto: bool = False  # chosen by --dtype auto
    note: str = ""  # why, or a warning, for the user

    @property
    def label(self) -> str:
        return f"{self.name} (auto)" if self.auto else self.name


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: then nothing counts as native)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, ARM
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AVX512-BF16, AMX, or ARM's BF16), not by conversion."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def native_fp16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes float16 in hardware (AVX512-FP16, AMX-FP16, or ARM's half-precision SIMD)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_fp16", "amx_fp16", "asimdhp"})


def native(name: str, device: str) -> bool:
    """Whether `device` computes precision `name` natively (int8 here needs bf16 activations on the CPU)."""
    if name == "float32":
        return True
    if device.startswith("cuda"):  # int8 runs there by dequantizing on the fly: correct, not faster
        import torch

        return name == "float16" or (name == "bfloat16" and torch.cuda.is_bf16_supported())
    if device != "cpu":
        return name in ("float16",)  # mps: half precision yes, bf16 and int8 kernels not assumed
    if name in ("bfloat16", "int8"):
        return native_bf16()
    return native_fp16()


def resolve(requested: str | None, device: str) -> Precision:
    """The precision to load in: the one asked for (checked), `auto`'s choice, or the device's default."""
    name = ALIASES.get(requested, requested) if requested else None
    if name is None:  # the default: bf16 on a GPU that has it, float32 elsewhere (exact, as before)
        return Precision("bfloat16" if device.startswith("cuda") and native("bfloat16", device) else "float32",
                         "bfloat16" if device.startswith("cuda") and native("bfloat16", device) else "float32")
    if name not in CHOICES:
        raise BardtermError(f"invalid dtype {requested!r}: use {', '.join(CHOICES)}")
    if name == "auto":
        return _auto(device)
    note = "" if native(name, device) else f"{name} is not native on this {device}: it may run slower than float32"
    return Precision(name, _activations(name, device), note=note)


def _auto(device: str) -> Precision:
    for name in SPEED_ORDER:
        cost = COST_NATS_PER_CHAR.get(name)
        if cost is not None and cost < MAX_COST_NATS_PER_CHAR and native(name, device):
            return Precision(name, _activations(name, device), auto=True,
                             note=f"auto: {name}, the fastest native precision on this {device} "
                                  f"(costs {cost:.4f} nats/char on the shipped model)")
    return Precision("float32", "float32", auto=True, note="auto: float32")


def _activations(name: str, device: str) -> str:
    if name != "int8":
        return name
    return "bfloat16" if native("bfloat16", device) else "float32"


def apply(model, precision: Precision) -> None:
    """After loading in `precision.load_dtype`: make the weights int8 where asked, and lay half-precision
    weights out as the fast kernels read them (in place; bf16 on the CPU: packed for oneDNN, see packed.py)."""
    if precision.name == "int8":
        from bardterm.quantize import quantize_int8

        quantize_int8(model)
    elif precision.name in ("bfloat16", "float16"):
        from bardterm.quantize import to_linear_layout

        to_linear_layout(model)
        from bardterm import packed  # on the CPU only (see packed.py)

        if precision.name == "bfloat16" and packed.can_pack():
            packed.pack_bf16_linears(model)  # the same products, faster at batch 1
        elif precision.name == "float16" and not native_fp16():
            packed.widen_fp16_linears(model)  # prompts in float32, not through an emulated fp16 product
