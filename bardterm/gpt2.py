"""bardterm's own GPT-2: loads a GPT-2 checkpoint (config.json, model.safetensors, tokenizer.json) without
importing transformers, and runs through the lean forward of `fast_gpt2.py`.

Why: importing transformers' model classes costs more than a second and a half before the first token
(measured: `import torch` 1.08 s, the shipped model's first token 2.68 s through transformers). A plain GPT-2
checkpoint, which is what `bardterm train` writes and what the shipped model is, needs none of it. The module
tree and parameter names are transformers' (`transformer.h.0.attn.c_attn.weight`, ...), so the same
safetensors file loads into either, and precision.py's int8 and half layouts apply unchanged.

Anything this does not cover (another architecture, a config option it does not implement, a LoRA adapter,
training) goes through transformers: `models.load_checkpoint` asks `supports` first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from bardterm.kv_buffers import BufferCache

ARCHITECTURE = "GPT2LMHeadModel"
# What transformers' GPT2Config defaults to, for keys a config.json leaves out.
DEFAULTS = {"n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "add_cross_attention": False,
            "tie_word_embeddings": True, "bos_token_id": 50256, "eos_token_id": 50256}


def supports(config: dict) -> str | None:
    """Why this module cannot run a model with `config` (read from config.json), or None if it can."""
    config = {**DEFAULTS, **config}
    checks = {
        "architecture": config.get("architectures") == [ARCHITECTURE] and config.get("model_type") == "gpt2",
        "activation": config["activation_function"] == "gelu_new",
        "attention options": (config["scale_attn_weights"] and not config["scale_attn_by_inverse_layer_idx"]
                              and not config["reorder_and_upcast_attn"] and not config["add_cross_attention"]),
        "tied head": config["tie_word_embeddings"],
        "remote code": "auto_map" not in config,
    }
    failed = [name for name, ok in checks.items() if not ok]
    return ", ".join(failed) if failed else None


def _meta(*shape: int) -> torch.Tensor:
    """A tensor with a shape and no data, for a weight the checkpoint fills in."""
    return torch.empty(shape, device="meta")


class Conv1D(nn.Module):
    """transformers' Conv1D: a linear layer whose weight is stored (in, out). precision.py knows it by name."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(_meta(nx, nf))
        self.bias = nn.Parameter(_meta(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], self.nf)


class NewGELU(nn.Module):
    """GPT-2's tanh approximation of GELU (transformers' NewGELUActivation); the lean forward runs it in place."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3.0))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        width = config.n_embd
        self.ln_1 = nn.LayerNorm(width, eps=config.layer_norm_epsilon, device="meta")
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = Conv1D(3 * width, width), Conv1D(width, width)
        self.attn.scaling = (width // config.n_head) ** -0.5
        self.ln_2 = nn.LayerNorm(width, eps=config.layer_norm_epsilon, device="meta")
        self.mlp = nn.Module()
        inner = config.n_inner or 4 * width
        self.mlp.c_fc, self.mlp.act, self.mlp.c_proj = Conv1D(inner, width), NewGELU(), Conv1D(width, inner)


@dataclass
class Output:
    """What transformers' causal LM output holds, as far as bardterm reads it."""

    logits: torch.Tensor
    past_key_values: BufferCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class GPT2(nn.Module):
    """GPT-2 for inference, with transformers' `forward` keywords as far as bardterm uses them."""

    def __init__(self, config: SimpleNamespace, generation_config: SimpleNamespace | None = None):
        super().__init__()
        self.config = config
        self.generation_config = generation_config or SimpleNamespace(eos_token_id=config.eos_token_id)
        self.transformer = nn.Module()
        # Weights on the meta device, uninitialised, for the checkpoint to fill in. (Not under a
        # torch.device("meta") block: random initialisers there import torch._dynamo, a second of start-up.)
        width = config.n_embd
        self.transformer.wte = nn.Embedding(config.vocab_size, width, _weight=_meta(config.vocab_size, width))
        self.transformer.wpe = nn.Embedding(config.n_positions, width, _weight=_meta(config.n_positions, width))
        self.transformer.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.transformer.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, device="meta")
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False, device="meta")
        self.lm_head.weight = self.transformer.wte.weight

    @property
    def device(self) -> torch.device:
        return self.transformer.wpe.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating type of its weights, as transformers' models report it (int8: their scales' type)."""
        return next(tensor.dtype for tensor in self.parameters() if tensor.is_floating_point())

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, embeddings):
        self.transformer.wte = embeddings

    def get_output_embeddings(self):
        return self.lm_head

    def new_cache(self, capacity: int) -> BufferCache:
        """A cache for a generation of up to `capacity` positions, its buffers allocated once."""
        return BufferCache(capacity)

    def forward(self, input_ids: torch.Tensor, past_key_values: BufferCache | None = None, use_cache: bool = True,
                output_hidden_states: bool = False, return_dict: bool = True, logits_to_keep: int = 0,
                **_) -> Output:
        from bardterm.fast_gpt2 import lean_forward

        cache = past_key_values if past_key_values is not None else BufferCache(input_ids.shape[1])
        logits, hidden = lean_forward(self)(input_ids, cache, hidden=output_hidden_states, keep=logits_to_keep)
        return Output(logits, cache if use_cache else None, hidden)


def load(path: Path, dtype: torch.dtype) -> GPT2:
    """The GPT-2 in checkpoint folder `path` (already checked by models.check_checkpoint), in `dtype`."""
    config = SimpleNamespace(**{**DEFAULTS, **json.loads((path / "config.json").read_text(encoding="utf-8"))})
    generation = path / "generation_config.json"
    generation_config = (SimpleNamespace(**json.loads(generation.read_text(encoding="utf-8")))
                         if generation.is_file() else None)
    model = GPT2(config, generation_config)
    expected = [name for name in model.state_dict() if name != "lm_head.weight"]  # the head is the embedding
    model.load_state_dict(read_safetensors(path / "model.safetensors", expected, dtype), strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign replaced the embedding: tie the head again
    return model.eval().requires_grad_(False)  # for inference only: bardterm trains transformers' classes


SAFETENSORS_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(file: Path, names: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Tensors `names` from a safetensors file, each read and converted to `dtype` in turn, so that the file's
    type and ours are never both held whole (a memory map would keep every page read until closed: distilgpt2's
    bf16 load peaked at 693 MB that way, fp32's whole file mapped beside the bf16 copy)."""
    with file.open("rb") as handle:
        header_length, header = _header(handle)
        missing = [name for name in names if name not in header]
        if missing:
            raise ValueError(f"{file.name} lacks {missing[0]}")
        tensors = {}
        for name in names:
            entry = header[name]
            if entry["dtype"] not in SAFETENSORS_TYPES:
                raise ValueError(f"{file.name}: {name} is {entry['dtype']}, not a float type")
            start, end = entry["data_offsets"]
            data = bytearray(end - start)
            handle.seek(8 + header_length + start)
            handle.readinto(data)
            tensor = torch.frombuffer(data, dtype=SAFETENSORS_TYPES[entry["dtype"]]) if data else torch.empty(0)
            tensors[name] = tensor.view(entry["shape"]).to(dtype)
    return tensors


def names_weights_as_transformers_does(file: Path) -> bool:
    """Whether a safetensors file names GPT-2's weights as GPT2LMHeadModel saves them ("transformer.h.0...");
    the original GPT-2 checkpoints on the Hub, saved from GPT2Model, name them without the prefix."""
    with file.open("rb") as handle:
        return "transformer.wte.weight" in _header(handle)[1]


def _header(handle) -> tuple[int, dict]:
    """A safetensors file's header: its length in bytes and its JSON (checked by models.check_checkpoint)."""
    length = int.from_bytes(handle.read(8), "little")
    return length, json.loads(handle.read(length))
