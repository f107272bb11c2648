"""FSDP: a model too big for one device, its weights, gradients and optimizer state sharded over the processes.

`accelerate launch --config_file fsdp.yaml` (distributed_type: FSDP, fsdp_version: 2) makes Accelerate shard the
model with PyTorch's FSDP2 `fully_shard` in `accelerator.prepare`. Every rank then holds a slice of each weight
(a DTensor), and a forward gathers the whole weights of each FSDP unit (a transformer block, with
TRANSFORMER_BASED_WRAP) just before it runs, on every rank together. So:

- saving: every rank joins in gathering the full weights (and the full optimizer state), which rank 0 alone holds,
  on the CPU, and writes as a one-process run would: a plain safetensors checkpoint and the same resume/ files;
- resume: every rank reads those full files and keeps its own slice;
- evaluation: every rank runs it (a forward is collective), and all get rank 0's figure.

Accelerate turns FSDP on only for GPUs; on a CPU (gloo) `enable_on_cpu` switches on the same path, which is how
the tests run it.
"""

from __future__ import annotations

import os

from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from bardterm.errors import BardtermError


def requested() -> bool:
    """Whether the launch asks for FSDP (`accelerate launch` with distributed_type: FSDP, or --use_fsdp)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_on_cpu(accelerator, mp: str) -> None:
    """Accelerate leaves a CPU launch (gloo) data-parallel even when FSDP is asked for; FSDP2 itself runs there, so
    switch Accelerate's FSDP path on, with the plugin it would have built from the launch's settings."""
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* settings `accelerate launch` exported
    if mp != "no":
        plugin.set_mixed_precision(mp)
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as Accelerate records it (state.py)


def check(accelerator, config: dict) -> None:
    """What FSDP in bardterm does not do, refused in one line before anything runs."""
    if accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise BardtermError("bardterm train shards with FSDP2: set fsdp_version: 2 in your Accelerate config "
                            "(or pass --fsdp_version 2 to accelerate launch)")
    for key, flag in (("ema", "--ema"), ("lora", "--lora")):
        if config.get(key):
            raise BardtermError(f"{flag} is not supported with FSDP yet; drop it, or launch data-parallel "
                                "(distributed_type: MULTI_GPU)")
    if config["optimizer"] == "muon":
        raise BardtermError("--optimizer muon orthogonalises whole matrices, which FSDP splits over the processes; "
                            "use adamw or lion with FSDP")


def _state_dict_api():
    """PyTorch's state-dict helpers for sharded models (imported here: ~2 s that only an FSDP run pays)."""
    from torch.distributed.checkpoint import state_dict

    return state_dict


def _full(api, on_rank0_only: bool):
    """Options for whole tensors; `on_rank0_only`: gathered onto rank 0's CPU memory, the others get nothing."""
    return api.StateDictOptions(full_state_dict=True, cpu_offload=on_rank0_only)


def _param_names(model, optimizer) -> list[str]:
    """The optimizer's parameters by name, in the order a plain optimizer.state_dict() numbers them."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def full_weights(model) -> dict | None:
    """The whole model's state dict on rank 0 (None elsewhere); every rank must call it."""
    api = _state_dict_api()
    return api.get_model_state_dict(model, options=_full(api, on_rank0_only=True)) or None


def full_optimizer_state(model, optimizer) -> dict | None:
    """The whole optimizer state on rank 0, numbered as a one-process optimizer.state_dict() is (None elsewhere);
    every rank must call it."""
    api = _state_dict_api()
    full = api.get_optimizer_state_dict(model, optimizer, options=_full(api, on_rank0_only=True))
    if not full:
        return None
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    return {"state": {index[name]: entries for name, entries in full["state"].items()},
            "param_groups": [dict(group, params=[index[name] for name in group["params"]])
                             for group in full["param_groups"]]}


def load_full(model, optimizer, weights: dict, optimizer_state: dict) -> None:
    """Give every rank its slice of full weights and optimizer state (as `full_weights` and `full_optimizer_state`
    return them); every rank must call it with the same full dicts."""
    api = _state_dict_api()
    names = _param_names(model, optimizer)
    api.set_model_state_dict(model, weights, options=_full(api, on_rank0_only=False))
    by_name = {"state": {names[int(i)]: entries for i, entries in optimizer_state["state"].items()},
               "param_groups": [dict(group, params=[names[i] for i in group["params"]])
                                for group in optimizer_state["param_groups"]]}
    api.set_optimizer_state_dict(model, optimizer, by_name, options=_full(api, on_rank0_only=False))
