"""Several processes training one model (torchrun, `accelerate launch`): what the ranks must agree on.

Data-parallel training keeps every rank in lockstep: each step ends in a gradient all-reduce, so a decision
that only one rank takes (stop now, stop early, the run diverged) would leave the others waiting forever.
Every such decision is therefore either computed from values all ranks share (rank 0's evaluation, reduced
losses) or agreed on explicitly (`agree`). With one process each helper is a no-op.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import torch
import torch.distributed as dist

from bardterm.errors import BardtermError


def launched_rank() -> int:
    """This process's rank as its launcher (torchrun, accelerate launch) set it; 0 when run alone."""
    return int(os.environ.get("RANK") or 0)


def launched_world() -> int:
    """How many processes the launcher started (1 when run alone)."""
    return int(os.environ.get("WORLD_SIZE") or 1)


def one_of_several_not_started() -> bool:
    """`accelerate launch --num_processes N` without a GPU (or a config file) runs its simple launcher: one
    process, with MASTER_ADDR set for N but no WORLD_SIZE; trained on, it would be one silent run of N."""
    env = os.environ
    return "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env and "WORLD_SIZE" not in env


def refuse_sharding(distributed_type) -> None:
    """DeepSpeed and Megatron-LM shard the model their own ways, which bardterm does not gather or save; such a
    launch would hang or save a shard, so it is refused before anything runs (FSDP is supported: sharding.py)."""
    name = str(getattr(distributed_type, "value", distributed_type)).upper()
    if name in ("DEEPSPEED", "MEGATRON_LM"):
        raise BardtermError(f"bardterm train does not support {name}, which your Accelerate config asks for: set "
                            "distributed_type: FSDP (with fsdp_version: 2) to shard a model too big for one device, "
                            "or MULTI_GPU (or MULTI_CPU) to train data-parallel")


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree(flag: bool, device) -> bool:
    """True on every rank if `flag` is true on any rank (one small all-reduce)."""
    if not distributed():
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of `values` over the ranks (each rank's losses are of its own share of the batch)."""
    if not distributed():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


def from_main(obj):
    """Rank 0's `obj` on every rank (e.g. its evaluation, which the others wait for)."""
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_on_main(obj) -> list | None:
    """[rank 0's obj, rank 1's, ...] on rank 0, None elsewhere (e.g. every rank's RNG state, which rank 0 saves)."""
    if not distributed():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def peer_lost(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another rank died (its socket closed, or a timeout)."""
    if not distributed():
        return False
    backend_error = getattr(dist, "DistBackendError", ())
    text = str(error).lower()
    return isinstance(error, backend_error) or (isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "broken pipe",
                                  "timed out", "peer")))


class StopFlag:
    """First SIGINT/SIGTERM: stop after this step and save. A second one, at least a second later: abort now.

    Under torchrun, Ctrl+C reaches every rank twice in quick succession (from the terminal, and from torchrun
    passing it on), so signals within a second of the first count as one.
    """

    def __init__(self, say):
        self.requested = False
        self.say = say
        self._first = 0.0
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested:
            if time.monotonic() - self._first > 1.0:
                raise KeyboardInterrupt
            return
        self.requested = True
        self._first = time.monotonic()
        self.say("[yellow]stopping after this step and saving a resumable state "
                 "(Ctrl+C again to abort without saving)[/yellow]")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
