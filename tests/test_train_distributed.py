"""`bardterm train` under torchrun with 2 processes on the CPU (gloo), as a user would launch it.

Every run is the tiny GPT-2 of conftest.tiny_train_args on a slice of text, without dropout, so that the one-
and two-process runs compute the same thing. A `sitecustomize` module put on the workers' path records which
rank calls each function that writes to the run directory, and can send Ctrl+C or kill a rank at a given step,
the way a person at the terminal would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import SHARED_CORPUS, TEXT, tiny_train_args

HOOKS = textwrap.dedent('''
    import os, signal
    if "RANK" in os.environ:
        from bardterm.training import checkpoint, loop

        rank, log = os.environ["RANK"], os.environ["BARDTERM_TEST_WRITES"]

        def recorded(name, function):
            def wrapper(*args, **kwargs):
                with open(log, "a") as handle:
                    handle.write(f"{rank} {name}\\n")
                return function(*args, **kwargs)
            return wrapper

        for name in ("save_model_dir", "save_resume", "atomic_write_json", "atomic_write_bytes"):
            setattr(checkpoint, name, recorded(name, getattr(checkpoint, name)))
        loop.plot = recorded("plot", loop.plot)

        step_hook = loop.train_step
        at, what = int(os.environ.get("BARDTERM_TEST_AT", "0")), os.environ.get("BARDTERM_TEST_DO", "")

        def train_step(run, state):
            step_hook(run, state)
            if state.step == at and what == "ctrl-c" and rank == "0":
                os.killpg(os.getpgid(0), signal.SIGINT)  # the terminal's Ctrl+C: every process of the group
            if state.step == at and what == "kill" and rank == "1":
                os.kill(os.getpid(), signal.SIGKILL)

        loop.train_step = train_step
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(SHARED_CORPUS.read_text()[:40_000] if SHARED_CORPUS.is_file() else TEXT * 300)
    return path


@pytest.fixture(scope="module")
def hooks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "sitecustomize.py").write_text(HOOKS)
    return folder


def torchrun(hooks, argv, *, writes: Path, at: int = 0, do: str = "", timeout: float = 240, accelerate=False,
             config_file: Path | None = None):
    """Run `bardterm ARGV` under torchrun (or `accelerate launch`, with `config_file` if given) with 2 processes, in
    a session of its own (as a terminal's process group)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", BARDTERM_TEST_WRITES=str(writes),
               BARDTERM_TEST_AT=str(at), BARDTERM_TEST_DO=do)
    if config_file:
        launcher = [Path(sys.executable).with_name("accelerate"), "launch", "--config_file", config_file,
                    "--main_process_port"]
    elif accelerate:  # on a machine without GPUs too, --multi_gpu is what starts several processes
        launcher = [Path(sys.executable).with_name("accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port"]
    command = [*map(str, launcher), str(free_port()), "-m", "bardterm", *map(str, argv)]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, start_new_session=True)
    result.seconds = time.monotonic() - started
    return result


def run_args(data, out, *extra):
    # global batch 8: 2 processes x 4 here, 1 process x 8 in the reference run
    return [*tiny_train_args(data, out, "--dropout", "0", "--max-steps", "8", "--eval-interval", "4",
                             "--log-interval", "2", *extra)]


def bardterm_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(("training ", "step ", "eval step ", "done:",
                                                                     "stopped at", "stopping"))]


def assert_same_tensors(one: Path, other: Path, names, *, exact: bool = False) -> None:
    """Each safetensors file of `names` holds the same tensors in run directory `other` as in `one` (within float
    tolerance, or bit for bit)."""
    import torch
    from safetensors.torch import load_file

    for name in names:
        a, b = load_file(str(one / name)), load_file(str(other / name))
        assert a.keys() == b.keys(), name
        for key in a:
            if exact:
                assert torch.equal(a[key], b[key]), (name, key)
            else:
                torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}")


def writers(path: Path) -> set[str]:
    return {line.split()[0] for line in path.read_text().splitlines()} if path.exists() else set()


@pytest.fixture(scope="module")
def two_process_run(data, hooks, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    result = torchrun(hooks, run_args(data, root / "run"), writes=root / "writes.log")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_two_processes_equal_one_with_the_same_global_batch(two_process_run, data, tmp_path):
    from bardterm.cli import main

    root, result = two_process_run
    one = tmp_path / "one"
    assert main(run_args(data, one, "--batch-size", "8")) == 0
    assert_same_tensors(one, root / "run", ("resume/model.safetensors", "last/model.safetensors", "model.safetensors"))
    meta = json.loads((root / "run" / "bardterm.json").read_text())
    assert meta["derived"]["processes"] == 2 and meta["derived"]["global_batch"] == 8
    one_meta = json.loads((one / "bardterm.json").read_text())
    for a, b in zip(one_meta["metrics"], meta["metrics"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)  # the loss of the whole global batch


def test_every_message_once_and_one_writer(two_process_run):
    root, result = two_process_run
    lines = bardterm_lines(result.stdout)
    assert [line.split(":")[0].split(" loss")[0].split(" (")[0] for line in lines if not line.startswith("training")] \
        == ["step 2/8", "step 4/8", "eval step 4", "step 6/8", "step 8/8", "eval step 8", "done"]
    assert sum(line.startswith("training ") for line in lines) == 1 and "batch 8 (2 processes)" in lines[0]
    assert "bardterm: error" not in result.stderr
    assert writers(root / "writes.log") == {"0"}  # rank 1 never writes
    assert not [p for p in (root / "run").rglob(".*")], "staging leftovers"
    assert {p.name for p in (root / "run" / "resume").iterdir()} == {
        "model.safetensors", "optimizer.safetensors", "rng.safetensors", "rng.rank1.safetensors",
        "trainer_state.json"}


def test_ctrl_c_stops_both_and_resume_under_two_processes_equals_the_uninterrupted_run(two_process_run, data, hooks,
                                                                                       tmp_path, capsys):
    from bardterm.cli import main

    root, uninterrupted = two_process_run
    out = tmp_path / "run"
    stopped = torchrun(hooks, run_args(data, out), writes=tmp_path / "writes.log", at=5, do="ctrl-c")
    assert stopped.returncode != 0 and stopped.seconds < 120
    assert sum(line.startswith("stopped at step 5/8") for line in stopped.stdout.splitlines()) == 1, stopped.stdout
    state = json.loads((out / "resume" / "trainer_state.json").read_text())
    assert state["step"] == 5 and state["processes"] == 2
    assert writers(tmp_path / "writes.log") == {"0"}

    # one process cannot continue a two-process run: one line that says how
    assert main(run_args(data, out, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 process(es)" in err and "--nproc_per_node 2" in err

    resumed = torchrun(hooks, run_args(data, out, "--resume"), writes=tmp_path / "writes.log")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    before = [line for line in bardterm_lines(stopped.stdout) if line.startswith(("step ", "eval step"))]
    after = [line for line in bardterm_lines(resumed.stdout) if line.startswith(("step ", "eval step"))]
    logged = [line for line in bardterm_lines(uninterrupted.stdout) if line.startswith(("step ", "eval step"))]
    strip = lambda lines: [line.split(" lr ")[0].split("  val nats")[0] for line in lines]  # noqa: E731
    assert strip(before + after) == strip(logged)
    assert_same_tensors(root / "run", out, ("resume/model.safetensors", "last/model.safetensors", "model.safetensors"),
                        exact=True)


def test_a_killed_rank_ends_the_run_cleanly_under_accelerate_launch(data, hooks, tmp_path):
    out = tmp_path / "run"
    argv = tiny_train_args(data, out, "--dropout", "0", "--max-steps", "100000", "--eval-interval", "10",
                           "--log-interval", "10")
    result = torchrun(hooks, argv, writes=tmp_path / "writes.log", at=15, do="kill", timeout=180, accelerate=True)
    assert "batch 8 (2 processes)" in result.stdout  # accelerate launch started two processes that train together
    assert result.returncode != 0
    assert result.seconds < 90, result.seconds  # no hang: the surviving rank stops as soon as its peer is gone
    assert not [p for p in out.rglob(".*")], "half-written staging left behind"
    state = json.loads((out / "resume" / "trainer_state.json").read_text())
    assert state["step"] == 10  # the last evaluation's state, whole
    from bardterm.training.checkpoint import load_model

    load_model(out / "last")


def test_accelerate_launch_that_starts_one_process_for_several_is_refused(data, tmp_path, capsys, monkeypatch):
    """`accelerate launch --num_processes 2` on a machine without GPUs starts one process (its simple launcher)."""
    from bardterm.cli import main

    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(run_args(data, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--multi_gpu" in err and "torchrun" in err
    assert not (tmp_path / "run").exists()
