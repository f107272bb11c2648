"""`bardterm train` with FSDP (the model sharded over 2 processes) through `accelerate launch --config_file`, on the
CPU (gloo), as a user would launch it: the config file is the README's, less the GPU.

The launch helpers, the tiny model and the recording `sitecustomize` are test_train_distributed.py's.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from bardterm.errors import BardtermError
from test_train_distributed import (assert_same_tensors, bardterm_lines, data, hooks, run_args,  # noqa: F401
                                    torchrun, writers)

FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
mixed_precision: 'no'
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_reshard_after_forward: true
  fsdp_cpu_ram_efficient_loading: true
  fsdp_sync_module_states: true
"""


def fsdp_args(data, out, *extra):
    return run_args(data, out, "--n-layer", "2", *extra)  # two blocks: each its own FSDP unit, beside the root


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fsdp") / "fsdp.yaml"
    path.write_text(FSDP_CONFIG)
    return path


@pytest.fixture(scope="module")
def fsdp_run(data, hooks, config_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp_run")
    result = torchrun(hooks, fsdp_args(data, root / "run"), writes=root / "writes.log", config_file=config_file)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_fsdp_equals_one_process_with_the_same_global_batch(fsdp_run, data, tmp_path):
    from bardterm.cli import main
    from bardterm.training.checkpoint import load_model

    root, result = fsdp_run
    one = tmp_path / "one"
    assert main(fsdp_args(data, one, "--batch-size", "8")) == 0
    # gathered full weights and optimizer state, saved as one process saves them
    assert_same_tensors(one, root / "run", ("resume/model.safetensors", "last/model.safetensors",
                                            "model.safetensors", "resume/optimizer.safetensors"))
    meta, one_meta = (json.loads((run / "bardterm.json").read_text()) for run in (root / "run", one))
    assert meta["derived"]["processes"] == 2 and meta["derived"]["global_batch"] == 8
    assert meta["derived"]["parameters"] == one_meta["derived"]["parameters"]
    for a, b in zip(one_meta["metrics"], meta["metrics"], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)  # every rank evaluates; the same figure
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    model, _ = load_model(root / "run")  # a plain checkpoint that bardterm loads
    assert not any(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters())


def test_fsdp_prints_each_line_once_and_rank_0_alone_writes(fsdp_run):
    root, result = fsdp_run
    lines = bardterm_lines(result.stdout)
    assert sum(line.startswith("training ") for line in lines) == 1 and "batch 8 (2 processes)" in lines[0]
    assert sum(line.startswith("done:") for line in lines) == 1
    assert writers(root / "writes.log") == {"0"}
    assert not [p for p in (root / "run").rglob(".*")], "staging leftovers"


def test_an_fsdp_run_stopped_and_resumed_equals_the_uninterrupted_one(fsdp_run, data, hooks, config_file, tmp_path):
    root, uninterrupted = fsdp_run
    out = tmp_path / "run"
    stopped = torchrun(hooks, fsdp_args(data, out), writes=tmp_path / "writes.log", at=5, do="ctrl-c",
                       config_file=config_file)
    assert stopped.returncode != 0 and stopped.seconds < 120
    assert json.loads((out / "resume" / "trainer_state.json").read_text())["step"] == 5
    resumed = torchrun(hooks, fsdp_args(data, out, "--resume"), writes=tmp_path / "writes.log",
                       config_file=config_file)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert writers(tmp_path / "writes.log") == {"0"}
    # exact: each rank took back its slice of the full state
    assert_same_tensors(root / "run", out, ("resume/model.safetensors", "model.safetensors",
                                            "resume/optimizer.safetensors"), exact=True)


@pytest.mark.parametrize("setting, message", [({"ema": 0.99}, "--ema is not supported with FSDP"),
                                              ({"lora": 8}, "--lora is not supported with FSDP"),
                                              ({"optimizer": "muon"}, "use adamw or lion with FSDP"),
                                              ({"fsdp_version": 1}, "set fsdp_version: 2")])
def test_what_fsdp_does_not_do_is_refused_in_one_line(setting, message):
    from bardterm.training import sharding

    plugin = SimpleNamespace(fsdp_version=2)
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
    supported = {"optimizer": "adamw", "ema": 0.0, "lora": 0}
    sharding.check(accelerator, supported)
    plugin.fsdp_version = setting.pop("fsdp_version", 2)
    with pytest.raises(BardtermError, match=message) as refused:
        sharding.check(accelerator, {**supported, **setting})
    assert "\n" not in str(refused.value)
