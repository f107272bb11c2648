"""The native decode step: one token of a GPT-2 or Llama model on the CPU, batch 1, in one call into
`native/cpu_step.cpp` (why, and what it measured: see that file).

    step = native_decode_step(model, lean_step)   # or None: then the lean step (fast_gpt2.py, fast_llama.py)

The C++ is compiled on this machine, for this CPU, the first time it is needed (g++ -O3 -march=native, about 2 s,
in a background thread: nothing waits for it) and kept in the user's cache folder, keyed by the source and the
CPU's flags; later runs load it at once. Until it is there, and wherever it cannot serve (several rows, a cache
it cannot write into, a layer type it does not know), the lean step runs instead.

Its logits equal the model's up to float32 rounding: it sums in float32 in its own order, and keeps activations
in float32 where a bf16 or fp16 model rounds them at each op (tested against the model, within a tolerance).
`BARDTERM_NATIVE_STEP=0` turns it off, for logits bit for bit equal to transformers' in float32.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native") / "cpu_step.cpp"
ENVIRONMENT = "BARDTERM_NATIVE_STEP"
BASE_FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
FLAGS = [*BASE_FLAGS, "-march=native"]  # this CPU's vector instructions (the build is kept per CPU)
F32, BF16, F16, I8 = 0, 1, 2, 3
KINDS = {torch.float32: F32, torch.bfloat16: BF16, torch.float16: F16, torch.int8: I8}
GPT2, LLAMA = 0, 1


class Linear(ctypes.Structure):
    _fields_ = [("weight", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("kind", ctypes.c_int32), ("transposed", ctypes.c_int32), ("out", ctypes.c_int32),
                ("in_", ctypes.c_int32)]


class Block(ctypes.Structure):
    _fields_ = [("norm1_w", ctypes.c_void_p), ("norm1_b", ctypes.c_void_p), ("q", Linear), ("k", Linear),
                ("v", Linear), ("o", Linear), ("norm2_w", ctypes.c_void_p), ("norm2_b", ctypes.c_void_p),
                ("gate", Linear), ("up", Linear), ("down", Linear)]


class Model(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in ("arch", "layers", "width", "heads", "kv_heads", "head_dim",
                                                    "inner", "vocab", "cache_kind", "embed_kind")] + [
        ("eps", ctypes.c_float), ("attn_scale", ctypes.c_float), ("embed", ctypes.c_void_p),
        ("embed_scale", ctypes.c_void_p), ("positions", ctypes.c_void_p), ("inv_freq", ctypes.c_void_p),
        ("final_w", ctypes.c_void_p), ("final_b", ctypes.c_void_p), ("head", Linear),
        ("blocks", ctypes.POINTER(Block))]


# ---- the library: compiled once per machine, in the background --------------------------------------------

_library: ctypes.CDLL | None = None
_build: threading.Thread | None = None
_build_error: str | None = None
_lock = threading.Lock()


def enabled() -> bool:
    return os.environ.get(ENVIRONMENT, "1") != "0"


def library(wait: bool = False) -> ctypes.CDLL | None:
    """The compiled step, or None: loaded at once if this machine has built it before, else built in a
    background thread (None until it is done, unless `wait`). None for good where there is no compiler."""
    global _build
    if _library is not None or not enabled():
        return _library
    with _lock:
        if _build is None:
            if _load(library_path()):
                return _library
            _build = threading.Thread(target=_build_and_load, name="bardterm-native-build", daemon=True)
            _build.start()
    if wait:
        _build.join()
    return _library


def build_error() -> str | None:
    """Why the step could not be built (no compiler, a compile error), once a build has failed."""
    return _build_error


def library_path() -> Path:
    """Where this machine's build lives: the cache folder, named by the source, flags and CPU it was built for."""
    from platformdirs import user_cache_dir

    from bardterm.precision import cpu_flags

    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS + sorted(cpu_flags())).encode()).hexdigest()[:16]
    return Path(user_cache_dir("bardterm")) / "native" / f"cpu_step-{key}.so"


def compile_library(target: Path, flags: list[str]) -> str | None:
    """Compile cpu_step.cpp with `flags` into `target`; None, or why it failed. The compiler writes a partial
    file that `sh` renames into place once whole, so a bardterm that exits mid-build (a short `bardterm
    generate`) leaves the build to the next run, and no process ever loads half a library."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return "no C++ compiler (c++ or g++) found"
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    script = 'compiler="$1" partial="$2" target="$3"; shift 3; "$compiler" "$@" -o "$partial" && mv -f "$partial" "$target"'
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["sh", "-c", script, "sh", compiler, str(partial), str(target), *flags, str(SOURCE)],
                              capture_output=True, text=True, start_new_session=True)
    except OSError as error:
        return f"could not build the native step: {error}"
    if done.returncode != 0 or not target.exists():
        lines = done.stderr.strip().splitlines()
        return f"{Path(compiler).name} failed: {lines[-1] if lines else f'exit status {done.returncode}'}"
    return None


def open_library(path: Path) -> ctypes.CDLL:
    """Load a build of cpu_step.cpp (OSError if it cannot be). Its OpenMP is libgomp.so.1, which torch has loaded
    already: the step's threads are torch's."""
    found = ctypes.CDLL(str(path))
    found.bardterm_step.argtypes = [ctypes.POINTER(Model), ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                    ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    found.bardterm_step.restype = ctypes.c_int
    found.bardterm_vector_isa.restype = ctypes.c_char_p
    return found


def _build_and_load() -> None:
    global _build_error
    _build_error = compile_library(library_path(), FLAGS)
    if _build_error is None:
        _load(library_path())


def _load(path: Path) -> bool:
    global _library, _build_error
    if not path.exists():
        return False
    try:
        _library = open_library(path)
    except OSError as error:
        _build_error = f"could not load {path}: {error}"
        return False
    return True


def lay_out_float32(model) -> None:
    """bardterm's own float32 GPT-2 (gpt2.py), when the native step is on: GPT-2's Conv1D weights, stored (in, out),
    become nn.Linear's (out, in), which the native step reads a row at a time (distilgpt2's block products, one
    thread, 2-core AMD EPYC: 10.2 ms through (in, out), 7.7 ms by rows). Prompts then go through F.linear, whose
    float32 sums are not bit for bit transformers' addmm: with BARDTERM_NATIVE_STEP=0 nothing changes."""
    if enabled():
        from bardterm.quantize import to_linear_layout

        to_linear_layout(model)


# ---- a model's weights, as the step reads them -------------------------------------------------------------

class _Unsupported(Exception):
    """A layer or setting the native step does not run: the lean step does."""


class _Plan:
    """The ctypes structures for one model, and the tensors they point into (kept alive here)."""

    def __init__(self):
        self.keep: list[torch.Tensor] = []

    def pointer(self, tensor: torch.Tensor | None, dtype: torch.dtype | None = torch.float32) -> int | None:
        """The address of `tensor` (converted to `dtype` and made contiguous if it is not: a copy, kept)."""
        if tensor is None:
            return None
        tensor = tensor.detach()
        if tensor.device.type != "cpu":
            raise _Unsupported("not on the CPU")
        if dtype is not None:
            tensor = tensor.to(dtype)
        tensor = tensor.contiguous()
        self.keep.append(tensor)
        return tensor.data_ptr()

    def linear(self, layer) -> Linear:
        from bardterm.packed import PackedLinear, WidenedLinear
        from bardterm.quantize import Int8Linear

        kind = type(layer)
        if kind.__name__ == "Conv1D" and hasattr(layer, "nf"):  # GPT-2's (in, out) weight, float32 only
            if layer.weight.dtype != torch.float32:
                raise _Unsupported(f"Conv1D in {layer.weight.dtype}")
            size_in, size_out = layer.weight.shape
            return Linear(self.pointer(layer.weight), None, self.pointer(layer.bias), F32, 1, size_out, size_in)
        if kind is Int8Linear:
            weight, scale = layer.weight, layer.scale
        elif kind is PackedLinear:
            weight, scale = layer.plain_weight, None
        elif kind in (WidenedLinear, torch.nn.Linear):
            weight, scale = layer.weight, None
        else:
            raise _Unsupported(f"layer {kind.__name__}")
        if weight.dtype not in KINDS:
            raise _Unsupported(f"weights in {weight.dtype}")
        size_out, size_in = weight.shape
        return Linear(self.pointer(weight, None), self.pointer(scale), self.pointer(layer.bias), KINDS[weight.dtype],
                      0, size_out, size_in)

    def embedding(self, model: Model, embedding) -> None:
        from bardterm.quantize import Int8Embedding

        if type(embedding) is Int8Embedding:
            model.embed_scale = self.pointer(embedding.scale)
        elif type(embedding) is not torch.nn.Embedding:
            raise _Unsupported(f"embedding {type(embedding).__name__}")
        if embedding.weight.dtype not in KINDS:
            raise _Unsupported(f"embedding in {embedding.weight.dtype}")
        model.embed, model.embed_kind = self.pointer(embedding.weight, None), KINDS[embedding.weight.dtype]


def _gpt2_plan(model, plan: _Plan) -> Model:
    config, transformer = model.config, model.transformer
    blocks = transformer.h
    if any(type(block.mlp.act).__name__ not in ("NewGELUActivation", "NewGELU") for block in blocks):
        raise _Unsupported("activation")
    if len({block.attn.scaling for block in blocks}) != 1:  # scale_attn_by_inverse_layer_idx: one per layer
        raise _Unsupported("attention scale per layer")
    c_fc = blocks[0].mlp.c_fc
    inner = c_fc.nf if hasattr(c_fc, "nf") else c_fc.out_features
    native = Model(GPT2, len(blocks), config.n_embd, config.n_head, config.n_head, config.n_embd // config.n_head,
                   inner, config.vocab_size)
    native.eps, native.attn_scale = blocks[0].ln_1.eps, blocks[0].attn.scaling
    plan.embedding(native, transformer.wte)
    native.positions = plan.pointer(transformer.wpe.weight)
    native.final_w, native.final_b = plan.pointer(transformer.ln_f.weight), plan.pointer(transformer.ln_f.bias)
    native.head = plan.linear(model.lm_head)
    empty = Linear()
    native.blocks = (Block * len(blocks))(*[
        Block(plan.pointer(b.ln_1.weight), plan.pointer(b.ln_1.bias), plan.linear(b.attn.c_attn), empty, empty,
              plan.linear(b.attn.c_proj), plan.pointer(b.ln_2.weight), plan.pointer(b.ln_2.bias), empty,
              plan.linear(b.mlp.c_fc), plan.linear(b.mlp.c_proj))
        for b in blocks])
    return native


def _llama_plan(model, plan: _Plan) -> Model:
    config, inner_model = model.config, model.model
    layers = inner_model.layers[:config.num_hidden_layers]
    if getattr(config, "hidden_act", "silu") != "silu" or inner_model.rotary_emb.attention_scaling != 1.0:
        raise _Unsupported("activation or rotary scaling")
    attention = layers[0].self_attn
    native = Model(LLAMA, len(layers), config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                   attention.head_dim, config.intermediate_size, config.vocab_size)
    native.eps, native.attn_scale = layers[0].input_layernorm.variance_epsilon, attention.scaling
    plan.embedding(native, inner_model.embed_tokens)
    native.inv_freq = plan.pointer(inner_model.rotary_emb.inv_freq)
    native.final_w = plan.pointer(inner_model.norm.weight)
    native.head = plan.linear(model.lm_head)
    native.blocks = (Block * len(layers))(*[
        Block(plan.pointer(d.input_layernorm.weight), None, plan.linear(d.self_attn.q_proj),
              plan.linear(d.self_attn.k_proj), plan.linear(d.self_attn.v_proj), plan.linear(d.self_attn.o_proj),
              plan.pointer(d.post_attention_layernorm.weight), None, plan.linear(d.mlp.gate_proj),
              plan.linear(d.mlp.up_proj), plan.linear(d.mlp.down_proj))
        for d in layers])
    return native


# ---- the step -----------------------------------------------------------------------------------------------

class ThreadChoice:
    """How many of torch's threads a generation's native steps use: all of them, unless one has become faster.

    With another program busy on one of two cores, the step's barriers wait on a thread that has no core: the
    shipped model ran at 333-946 tok/s on 2 threads against about 1,400 on 1 while CI ran on the other core. A step
    on all threads taking over SLOWER times the fastest seen is the sign: the next step tries one thread, which is
    kept while it is the faster, and every RETRY_EVERY steps one step tries all threads again. On a quiet machine
    nothing is tried. The logits do not depend on the number of threads (each row is summed by one thread)."""

    SLOWER = 1.3
    RETRY_EVERY = 32

    def __init__(self):
        self.on_one = False
        self.fastest_on_all: float | None = None
        self.last: dict[bool, float] = {}  # one thread or not -> the latest step's seconds
        self.steps_on_one = 0

    def threads(self, available: int) -> int:
        if available == 1 or not self.on_one:
            return available
        self.steps_on_one += 1
        return available if self.steps_on_one % self.RETRY_EVERY == 0 else 1

    def took(self, threads: int, available: int, seconds: float) -> None:
        if available == 1:
            return
        one = threads == 1
        self.last[one] = seconds
        if not one:
            self.fastest_on_all = seconds if self.fastest_on_all is None else min(self.fastest_on_all, seconds)
        if not self.on_one:
            self.on_one = not one and seconds > self.SLOWER * self.fastest_on_all
        else:  # keep one thread while it is the faster of the latest steps
            self.on_one = self.last.get(True, 0.0) <= self.last.get(False, float("inf"))


def native_decode_step(model, lean_step, built: ctypes.CDLL | None = None):
    """Return `step(input_ids (rows, 1), cache) -> logits (rows, vocab)` that runs batch-1 steps natively and
    anything else through `lean_step`; or None where the native step cannot run `model` (yet). `built`: a build
    other than this machine's (the tests' AVX2 and plain C++ builds)."""
    if lean_step is None or not enabled() or sys.platform == "win32":
        return None
    found = built or library()
    model_type = getattr(model.config, "model_type", None)
    if found is None or model_type not in ("gpt2", "llama"):
        return None
    plan = _Plan()
    try:
        native = (_gpt2_plan if model_type == "gpt2" else _llama_plan)(model, plan)
    except (_Unsupported, AttributeError):
        return None
    native_ref = ctypes.byref(native)
    kv = (ctypes.c_void_p * (2 * native.layers))()
    seen_buffers: list = [None] * native.layers
    run = found.bardterm_step
    choice = ThreadChoice()
    last_position = model.transformer.wpe.weight.shape[0] if model_type == "gpt2" else 2**31 - 1

    def step(input_ids: torch.Tensor, cache) -> torch.Tensor:
        layers = getattr(cache, "layers", ())
        if input_ids.shape[0] != 1 or len(layers) != native.layers:
            return lean_step(input_ids, cache)
        buffers = [getattr(layer, "_buffers", None) for layer in layers]
        position = layers[0].get_seq_length()
        if any(b is not s for b, s in zip(buffers, seen_buffers)):  # new buffers: check them, take their addresses
            if not _writable(buffers, layers, position, native):
                return lean_step(input_ids, cache)
            for index, (keys, values) in enumerate(buffers):
                kv[2 * index], kv[2 * index + 1] = keys.data_ptr(), values.data_ptr()
            seen_buffers[:] = buffers
        capacity = buffers[0][0].shape[2]
        if position >= capacity or position >= last_position:
            return lean_step(input_ids, cache)  # it grows the buffers (the next step takes the new ones), or says
                                                # why GPT-2 has no position embedding for this one
        logits = torch.empty(1, native.vocab)
        available = torch.get_num_threads()
        threads = choice.threads(available)
        started = time.perf_counter()
        if run(native_ref, kv, capacity, int(input_ids[0, 0]), position, logits.data_ptr(), threads):
            raise ValueError(f"native step: token {int(input_ids[0, 0])} or position {position} out of range")
        choice.took(threads, available, time.perf_counter() - started)
        for layer in layers:
            layer.grow_to(position + 1)  # the views follow when read (kv_buffers.GrowingViews)
        return logits

    step.plan = plan  # keeps the weights it points into alive as long as the step
    return step


def _writable(buffers, layers, position: int, native: Model) -> bool:
    """Whether every layer's buffers are what the C++ writes into: (1, kv_heads, capacity, head_dim), contiguous,
    one type the step knows, holding the layer's keys so far (`position` of them)."""
    if any(b is None for b in buffers) or not all(hasattr(layer, "grow_to") for layer in layers):
        return False
    kind = KINDS.get(buffers[0][0].dtype)
    shape = (1, native.kv_heads, buffers[0][0].shape[2], native.head_dim)
    if kind not in (F32, BF16, F16):
        return False
    native.cache_kind = kind
    for layer, pair in zip(layers, buffers):
        for buffer, held in zip(pair, (layer.keys, layer.values)):
            if (tuple(buffer.shape) != shape or not buffer.is_contiguous() or buffer.dtype != buffers[0][0].dtype
                    or buffer.device.type != "cpu" or held is None or held.shape[-2] != position
                    or held.data_ptr() != buffer.data_ptr()):
                return False
    return True
