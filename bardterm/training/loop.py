"""The training loop, nanoGPT-style, on Hugging Face Accelerate: one process, or data-parallel over several.

    run = setup(config)                       model, data, optimizer, run directory; RunState (restored on --resume)
    while state.step < total:
        train_step(run, state)                lr = warmup-then-cosine(step); each micro-batch: forward, backward
                                              (gradients averaged over processes at the last); clip; optimizer step
        every log_interval steps: the losses are read once (.item() syncs a GPU), averaged over processes
        every eval_interval steps: evaluate_and_save(run, state)   validation, best, last/ + resume/, early stop

Several processes (torchrun, `accelerate launch`): each reads its own share of every batch (global batch =
batch size x grad accumulation x processes); rank 0 alone evaluates, prints and writes, the others wait for
it, and every decision that ends the loop is taken by all ranks together (processes.py). With FSDP (a model
sharded over the processes, sharding.py) every rank also takes part in evaluating and in gathering what rank 0
saves.

Ctrl+C (or SIGTERM) asks the loop to stop after the current step; it then saves `last/` and `resume/` and
returns 130. A second Ctrl+C aborts at once (the previous saved state stays valid). `--resume` reloads the
weights, optimizer state and RNG states, and the data order is a pure function of (seed, step) (see
batches.py), so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from bardterm import __version__, lora
from bardterm.data import load_dataset
from bardterm.errors import BardtermError
from bardterm.training import checkpoint as ckpt
from bardterm.training import processes, sharding
from bardterm.training.average import WeightAverage
from bardterm.training.batches import BlockStream
from bardterm.training.build import build_scratch, load_base, make_optimizer, retokenize
from bardterm.training.evaluate import evaluate_ids
from bardterm.training.rundir import check_output, hardware, plot, probe_writable, run_dir_for
from bardterm.training.settings import DEFAULTS, RESUME_OVERRIDABLE
from bardterm.training.tokenizer import bos_id, encode, train_bpe

PLOT_EVERY_EVALS = 10  # loss.png is redrawn every this many evaluations, on Ctrl+C, and at the end


def lr_at(step: int, total: int, lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `min_ratio * lr` at step `total`."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def emulated_bf16(mp: str) -> bool:
    """bf16 autocast on a CPU without native bf16 (avx512_bf16 or AMX): torch emulates it, ~12x slower than fp32."""
    if mp != "bf16" or torch.cuda.is_available():
        return False
    native = (getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)()
              or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return not native


# --------------------------------------------------------------------------------------------- run state


@dataclass
class RunState:
    """Everything that changes as a run goes. resume/trainer_state.json holds it (with the config), and
    restoring it, with the weights, optimizer and RNG that checkpoint.py saves beside it, continues exactly."""

    total_steps: int
    processes: int = 1
    step: int = 0
    tokens_seen: int = 0
    history: list = field(default_factory=list)  # one record per evaluation
    best: dict = field(default_factory=lambda: {"val_loss": None, "step": None})
    bad_evals: int = 0  # evaluations since the best one
    window_losses: list = field(default_factory=list)  # each step's train loss since the last evaluation
    recent_losses: list = field(default_factory=list)  # ... since the last log line
    ema_updates: int | None = None
    wall_time: float = 0.0  # seconds trained before this process took over
    pending: list = field(default_factory=list, repr=False)  # losses not yet read off the device (not saved)
    started: float = field(default_factory=time.time, repr=False)  # (not saved)

    def elapsed(self) -> float:
        return self.wall_time + time.time() - self.started

    def to_json(self, run: Run) -> dict:
        saved = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("pending", "started")}
        saved.update(wall_time=self.elapsed(), ema_updates=run.average.updates if run.average else None,
                     config=run.config, dataset_sha256=run.dataset.sha256, bardterm_version=__version__)
        return saved

    def save(self, run: Run, weights: dict | None) -> None:
        """Write resume/ (rank 0, with every rank's RNG state); the others wait until it is written. `weights`:
        the full weights that full_weights gathered from a sharded model."""
        rank_rngs = processes.gather_on_main(ckpt.capture_rng())
        optimizer_state = sharding.full_optimizer_state(run.raw_model, run.optimizer) if run.sharded else None
        if run.main:
            ckpt.save_resume(run.run_dir, run.raw_model, run.optimizer, self.to_json(run),
                             average=run.average.model if run.average else None, rank_rngs=rank_rngs,
                             gathered=(weights, optimizer_state) if run.sharded else None)

    @classmethod
    def restore(cls, run: Run) -> RunState:
        saved = ckpt.load_resume(run.run_dir, run.raw_model, run.optimizer,
                                 average=run.average.model if run.average else None, rank=run.rank,
                                 sharded=run.sharded)
        names = {f.name for f in fields(cls)} - {"pending", "started"}
        state = cls(**{k: v for k, v in saved.items() if k in names and v is not None})
        if run.average:
            run.average.updates = saved["ema_updates"]
        if state.total_steps != run.total:
            run.say(f"note: run length changed from {state.total_steps} to {run.total} steps; the learning-rate "
                    "schedule stretches to match")
            state.total_steps = run.total
        return state


@dataclass
class Run:
    """What set-up made and the loop only reads: config, data, model, optimizer, and the processes' roles."""

    config: dict
    run_dir: Path
    dataset: object
    tokenizer: object
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    stream: BlockStream
    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by Accelerate (wrapped for data parallelism with several processes)
    raw_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    average: WeightAverage | None
    mp: str
    total: int
    steps_per_epoch: float
    say: object  # print on rank 0, nothing elsewhere

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def sharded(self) -> bool:
        """FSDP: each process holds a slice of every weight (sharding.py)."""
        return self.accelerator.distributed_type == DistributedType.FSDP

    @property
    def global_batch(self) -> int:
        return self.config["batch_size"] * self.config["grad_accum"] * self.world

    @property
    def evaluated(self):
        """What is evaluated, selected and saved: the weight average when there is one."""
        return self.average.model if self.average else self.raw_model


# ----------------------------------------------------------------------------------------------- set-up


def config_for_resume(config: dict, run_dir: Path) -> tuple[dict, dict]:
    """The saved run's config, with only the settings that may change on resume taken from `config`."""
    saved_state = ckpt.read_resume_state(run_dir)
    saved_config = {**DEFAULTS, **saved_state["config"]}  # a run saved before a setting existed had its default
    explicit = config.get("_explicit", {})
    changed = {k for k in config if k in saved_config and k not in RESUME_OVERRIDABLE
               and explicit.get(k) and config[k] != saved_config[k]}
    if changed:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(changed))
        raise BardtermError(f"{names} differ from the run being resumed in {run_dir}; drop them to resume exactly, "
                            "or start a new run")
    merged = dict(saved_config)
    for key in RESUME_OVERRIDABLE:
        if explicit.get(key):
            merged[key] = config[key]
    merged["output"] = str(run_dir)
    return merged, saved_state


def model_and_tokenizer(config: dict, dataset, run_dir: Path, resume: bool):
    if config["base"] == "scratch":
        if resume and (run_dir / "last" / "tokenizer.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(run_dir / "last")
        else:
            tokenizer = train_bpe(dataset.splits["train"], config["vocab_size"], model_max_length=config["block_size"])
        return build_scratch(config, tokenizer), tokenizer
    model, tokenizer = load_base(config)
    n_positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    if config.get("block_size") is None:
        config["block_size"] = min(256, n_positions)
    if config["block_size"] > n_positions:
        raise BardtermError(f"--block-size {config['block_size']} is longer than {config['base']}'s context "
                            f"({n_positions}); use at most {n_positions}")
    if config["lora"]:
        torch.manual_seed(config["seed"])  # the adapters' initial weights
        model = lora.wrap(model, config, lora.base_name(config["base"]))
    return model, tokenizer


def make_accelerator(mp: str, config: dict) -> Accelerator:
    if mp == "fp16" and not torch.cuda.is_available():
        raise BardtermError("--mixed-precision fp16 needs a GPU; use bf16 or no on a CPU")
    if processes.one_of_several_not_started():
        raise BardtermError("accelerate launch started one process, not several: on a machine without GPUs add "
                            "--multi_gpu (it then starts --num_processes processes that train together over gloo), "
                            "or launch with torchrun --nproc_per_node N")
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mp:
        AcceleratorState._reset_state()  # a second run in one process (tests, benchmarks) with other settings
    # Accelerate starts gloo for several processes on a machine without a GPU only when told it is on the CPU.
    cpu = processes.launched_world() > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=mp, cpu=cpu)
    if cpu and sharding.requested():
        sharding.enable_on_cpu(accelerator, mp)
    processes.refuse_sharding(accelerator.distributed_type)
    if accelerator.distributed_type == DistributedType.FSDP:
        sharding.check(accelerator, config)
    return accelerator


def setup(config: dict, *, resume: bool, overwrite: bool, say) -> tuple[Run, RunState]:
    run_dir = run_dir_for(config)
    check_output(run_dir, resume=resume, overwrite=overwrite)
    saved_state = None
    if resume:
        config, saved_state = config_for_resume(config, run_dir)
    config = {k: v for k, v in config.items() if not k.startswith("_")}

    dataset = load_dataset(config["dataset"], data_file=config.get("data_file"))
    if saved_state and saved_state.get("dataset_sha256") not in (None, dataset.sha256):
        raise BardtermError(f"dataset {dataset.name} is not the text the run in {run_dir} was trained on (sha256 "
                            "differs), so it cannot resume exactly; point it at the same data or start a new run")
    if config.get("threads"):
        torch.set_num_threads(config["threads"])

    model, tokenizer = model_and_tokenizer(config, dataset, run_dir, resume)
    block = config["block_size"]
    train_ids = encode(tokenizer, dataset.splits["train"])
    val_ids = encode(tokenizer, dataset.splits["validation"])
    if len(train_ids) < block + 1:
        raise BardtermError(
            f"dataset {dataset.name} is too short: its training split has {len(train_ids)} tokens, fewer than one "
            f"block of {block}+1; use a smaller --block-size or more text"
        )
    if len(val_ids) < 1:
        raise BardtermError(f"dataset {dataset.name} has an empty validation split; give it more text")

    mp = mixed_precision(config["mixed_precision"])
    accelerator = make_accelerator(mp, config)
    if not accelerator.is_main_process:
        hf_logging.set_verbosity_error()  # one copy of every warning: rank 0's
    world = accelerator.num_processes
    if saved_state and saved_state.get("processes", 1) != world:
        raise BardtermError(f"the run in {run_dir} was trained with {saved_state.get('processes', 1)} process(es) and "
                            f"this resume has {world}; resume it with the same number, e.g. torchrun "
                            f"--nproc_per_node {saved_state.get('processes', 1)}, so that its batches stay the same")
    stream = BlockStream(train_ids, block, config["seed"], retokenize=retokenize(config, tokenizer, dataset))
    global_batch = config["batch_size"] * config["grad_accum"] * world
    steps_per_epoch = stream.n_blocks / global_batch
    if config.get("max_steps"):
        total = config["max_steps"]
        if config.get("epochs"):
            total = min(total, max(1, math.ceil(config["epochs"] * steps_per_epoch)))
    else:
        total = max(1, math.ceil((config.get("epochs") or 1.0) * steps_per_epoch))

    if accelerator.is_main_process:
        if overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        probe_writable(run_dir)
    accelerator.wait_for_everyone()

    if accelerator.distributed_type != DistributedType.FSDP:  # FSDP moves each rank's slice to its device itself
        model.to(accelerator.device)
    optimizer = make_optimizer(model, config)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(prepared)
    if accelerator.process_index:  # each rank its own dropout draws; rank 0 draws as a one-process run does
        torch.manual_seed(config["seed"] * 1_000_003 + accelerator.process_index)
    average = WeightAverage(raw_model, config["ema"]) if config.get("ema") else None
    run = Run(config, run_dir, dataset, tokenizer, train_ids, val_ids, stream, accelerator, prepared, raw_model,
              optimizer, average, mp, total, steps_per_epoch, say)
    state = RunState.restore(run) if resume else RunState(total_steps=total, processes=world)
    return run, state


# ------------------------------------------------------------------------------------------------- steps


def train_step(run: Run, state: RunState) -> None:
    """One optimizer step over the global batch; this rank's losses are kept on the device until read."""
    c = run.config
    lr = lr_at(state.step, run.total, c["lr"], c["warmup_steps"], c["min_lr_ratio"])
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    losses = []
    for micro in range(c["grad_accum"]):
        first = ((state.step * c["grad_accum"] + micro) * run.world + run.rank) * c["batch_size"]
        x, y = run.stream.batch(first, c["batch_size"])
        x, y = x.to(run.accelerator.device), y.to(run.accelerator.device)
        last = micro == c["grad_accum"] - 1
        with nullcontext() if last else run.accelerator.no_sync(run.model):  # gradients averaged once, at the end
            with run.accelerator.autocast():
                logits = run.model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
            run.accelerator.backward(loss / c["grad_accum"])
        losses.append(loss.detach())
    if c["grad_clip"] > 0:
        run.accelerator.clip_grad_norm_(run.model.parameters(), c["grad_clip"])
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.average:
        run.average.update()
    state.pending.append(torch.stack(losses))
    state.step += 1
    state.tokens_seen += run.global_batch * run.stream.block


def read_losses(run: Run, state: RunState) -> None:
    """Move the pending step losses off the device (one sync), averaged over the processes, into the windows."""
    if not state.pending:
        return
    per_micro = processes.mean_over_ranks(torch.stack(state.pending)).tolist()
    first_step = state.step - len(per_micro) + 1
    state.pending = []
    for offset, micro_losses in enumerate(per_micro):
        step_loss = 0.0
        for value in micro_losses:
            step_loss += value / run.config["grad_accum"]
        state.window_losses.append(step_loss)
        state.recent_losses.append(step_loss)
        if not math.isfinite(step_loss):
            save_last_and_resume(run, state)
            raise BardtermError(f"training diverged at step {first_step + offset} (loss {step_loss}); lower --lr or "
                                "raise --warmup-steps, then start again with --overwrite")


def evaluate(run: Run, state: RunState, train_loss: float) -> tuple[dict, bool]:
    """Validation loss of the evaluated model, computed by rank 0 (by every rank, for a sharded model's forward
    needs them all) and shared, recorded in the history."""
    t0 = time.perf_counter()
    m = None
    if run.main or run.sharded:
        m = evaluate_ids(run.evaluated, run.val_ids, len(run.dataset.splits["validation"]), run.config["block_size"],
                         bos=bos_id(run.tokenizer), batch_size=run.config["eval_batch_size"],
                         device=run.accelerator.device, autocast=run.accelerator.autocast)
        m = {k: m[k] for k in ("loss", "nats_per_char", "bits_per_char")}
    m = processes.from_main(m)
    run.raw_model.train()
    c = run.config
    record = {"step": state.step, "epoch": round(state.step / run.steps_per_epoch, 4), "train_loss": train_loss,
              "val_loss": m["loss"], "val_nats_per_char": m["nats_per_char"], "val_bits_per_char": m["bits_per_char"],
              "lr": lr_at(max(0, state.step - 1), run.total, c["lr"], c["warmup_steps"], c["min_lr_ratio"]),
              "tokens_seen": state.tokens_seen, "wall_time": round(state.elapsed(), 2),
              "eval_s": round(time.perf_counter() - t0, 2)}
    state.history.append(record)
    improved = state.best["val_loss"] is None or m["loss"] < state.best["val_loss"] - c["min_delta"]
    if improved:
        state.best.update(val_loss=m["loss"], step=state.step, nats_per_char=m["nats_per_char"])
        state.bad_evals = 0
    else:
        state.bad_evals += 1
    return record, improved


def metadata(run: Run, state: RunState, kind: str) -> dict:
    """bardterm.json: what was trained on what, how, and how well."""
    best = state.best
    best_block = None
    if best.get("val_loss") is not None:
        b, nats = best["val_loss"], best["nats_per_char"]
        best_block = {"step": best["step"], "val_loss": b, "perplexity": math.exp(min(b, 700)),
                      "nats_per_char": nats, "bits_per_char": nats / math.log(2)}
    parameters = sum(p.numel() for p in run.raw_model.parameters())
    trainable = sum(p.numel() for p in run.raw_model.parameters() if p.requires_grad)
    d = run.dataset
    return {
        "bardterm_version": __version__,
        "kind": kind,
        "dataset": {"name": d.name, "sha256": d.sha256, "source": d.source,
                    "chars": {k: len(v) for k, v in d.splits.items()},
                    "tokens": {"train": len(run.train_ids), "validation": len(run.val_ids)}},
        "base": run.config["base"],
        "config": run.config,
        "derived": {"total_steps": run.total, "global_batch": run.global_batch, "processes": run.world,
                    "tokens_per_step": run.global_batch * run.config["block_size"],
                    "steps_per_epoch": run.steps_per_epoch, "parameters": parameters,
                    **({"trainable_parameters": trainable} if trainable != parameters else {}),
                    "vocab_size": len(run.tokenizer), "mixed_precision": run.mp},
        "step": state.step,
        "epoch": state.step / run.steps_per_epoch,
        "tokens_seen": state.tokens_seen,
        "best": best_block,
        "metrics": state.history,
        "wall_time_s": state.elapsed(),
        "hardware": hardware(run.accelerator),
        "eval_method": "non-overlapping windows of block_size over the whole validation split; "
                       "nats/char = total nats / characters",
    }


def full_weights(run: Run) -> dict | None:
    """A sharded model's full weights, gathered onto rank 0 (every rank calls this); None otherwise: rank 0 saves
    from its own whole copy."""
    return sharding.full_weights(run.raw_model) if run.sharded else None


def save_best(run: Run, state: RunState) -> None:
    weights = full_weights(run)
    if run.main:
        ckpt.save_model_dir(run.evaluated, run.tokenizer, metadata(run, state, "best"), run.run_dir, top_level=True,
                            weights=weights)
    run.accelerator.wait_for_everyone()


def save_last_and_resume(run: Run, state: RunState, *, draw: bool = False) -> None:
    """last/ (the model as of now) and resume/ (everything to continue), written by rank 0 alone."""
    read_losses(run, state)
    weights = full_weights(run)
    if run.main:
        ckpt.save_model_dir(run.evaluated, run.tokenizer, metadata(run, state, "last"), run.run_dir / "last",
                            top_level=False, weights=weights)
    state.save(run, weights)
    if run.main and draw:
        plot(state.history, run.run_dir / "loss.png")
    run.accelerator.wait_for_everyone()


def finish(run: Run, state: RunState, *, early: bool) -> None:
    """The best checkpoint's bardterm.json gets the whole history; --merge writes merged/; the plot is redrawn."""
    if not state.history or state.history[-1]["step"] != state.step:
        save_last_and_resume(run, state)
    if run.main and state.best["val_loss"] is not None:
        meta_path = run.run_dir / "bardterm.json"
        final = metadata(run, state, "best")
        try:
            best_meta = json.loads(meta_path.read_text())
            final.update(step=best_meta.get("step"), epoch=best_meta.get("epoch"),
                         tokens_seen=best_meta.get("tokens_seen"), finished={"step": state.step, "early_stopped": early})
            ckpt.atomic_write_json(meta_path, final)
        except (OSError, ValueError):
            pass
        if run.config.get("merge"):  # the best adapter, merged into a fresh copy of its base
            base, _ = load_base(run.config)
            merged = lora.attach(base, run.run_dir)
            ckpt.save_model_dir(merged, run.tokenizer, dict(final, kind="merged"), run.run_dir / "merged",
                                top_level=False)
        plot(state.history, run.run_dir / "loss.png")
    run.accelerator.wait_for_everyone()


# ------------------------------------------------------------------------------------------------- train


def make_console() -> Console:
    console = Console(stderr=False)
    return console if console.is_terminal else Console(stderr=False, width=200, soft_wrap=True)


def train(config: dict, *, resume: bool = False, overwrite: bool = False, show_progress: bool | None = None,
          on_step=None) -> int:
    """Run (or resume) training. Returns 0 when finished, 130 when stopped by Ctrl+C after saving."""
    console = make_console()
    main = processes.launched_rank() == 0
    say = console.print if main else (lambda *a, **k: None)
    try:
        return _train(config, resume, overwrite, show_progress, on_step, console, say)
    except (RuntimeError, OSError) as error:
        if processes.peer_lost(error):
            raise BardtermError("another process of this run stopped, so this one stops too; the last saved state "
                                f"in {run_dir_for(config)} is intact: continue it with --resume") from None
        raise


def _train(config, resume, overwrite, show_progress, on_step, console, say) -> int:
    run, state = setup(config, resume=resume, overwrite=overwrite, say=say)
    c = run.config
    interactive = console.is_terminal if show_progress is None else show_progress
    n_params = sum(p.numel() for p in run.raw_model.parameters())
    trainable = sum(p.numel() for p in run.raw_model.parameters() if p.requires_grad)
    adapter = f", LoRA rank {c['lora']}: {trainable / 1e6:.2f}M trained" if c["lora"] else ""
    say(f"[bold]training[/bold] {n_params / 1e6:.2f}M parameters ({c['base']}"
        f"{' ' + c['preset'] if c['base'] == 'scratch' else ''}{adapter}), vocab "
        f"{len(run.tokenizer)}, block {c['block_size']}, batch {run.global_batch}"
        f"{f' ({run.world} processes)' if run.world > 1 else ''}, {run.total} steps "
        f"({run.total / run.steps_per_epoch:.2f} epochs of {len(run.train_ids)} tokens), {c['optimizer']} lr "
        f"{c['lr']:g}, device {run.accelerator.device}{', ' + run.mp if run.mp != 'no' else ''} -> {run.run_dir}"
        + (f" (resuming at step {state.step})" if resume else ""))
    if emulated_bf16(run.mp):
        say("[yellow]note:[/yellow] this CPU has no native bf16 (avx512_bf16 or AMX), so bf16 autocast is emulated "
            "and about 12x slower than fp32; stop and add --mixed-precision no")

    progress = Progress(
        TextColumn("step"), MofNCompleteColumn(), BarColumn(),
        TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[tps]} tok/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=not (interactive and run.main), transient=False,
    )
    last_val = state.history[-1]["val_loss"] if state.history else None
    t_window, window_tokens = time.perf_counter(), 0
    stopped = early = False
    run.raw_model.train()
    with processes.StopFlag(say) as stop, progress:
        task = progress.add_task("train", total=run.total, completed=state.step, loss="-",
                                 val=f"{last_val:.3f}" if last_val is not None else "-", tps="-")
        while state.step < run.total:
            train_step(run, state)
            window_tokens += run.global_batch * run.stream.block
            tps = window_tokens / max(1e-9, time.perf_counter() - t_window)
            progress.update(task, completed=state.step, tps=f"{tps:,.0f}")
            if state.step % c["log_interval"] == 0:
                read_losses(run, state)
                recent = state.recent_losses
                progress.update(task, loss=f"{sum(recent[-20:]) / len(recent[-20:]):.3f}")
                if progress.disable:
                    lr = lr_at(state.step - 1, run.total, c["lr"], c["warmup_steps"], c["min_lr_ratio"])
                    say(f"step {state.step}/{run.total} loss {sum(recent) / len(recent):.4f} lr {lr:.2e} "
                        f"{tps:,.0f} tok/s elapsed {state.elapsed():,.0f}s")
                state.recent_losses = []
                t_window, window_tokens = time.perf_counter(), 0
            if on_step is not None:
                on_step(state.step)
            if state.step % c["eval_interval"] == 0 or state.step == run.total:
                read_losses(run, state)
                train_loss = sum(state.window_losses) / len(state.window_losses)
                state.window_losses = []
                record, improved = evaluate(run, state, train_loss)
                if improved:
                    save_best(run, state)
                progress.update(task, val=f"{record['val_loss']:.3f}")
                best = state.best
                say(f"eval step {state.step}: train {train_loss:.4f}  val {record['val_loss']:.4f}  "
                    f"val nats/char {record['val_nats_per_char']:.4f}  ({record['val_bits_per_char']:.4f} bits/char)"
                    f"{'  best, saved' if improved else '  (best %.4f at step %s)' % (best['val_loss'], best['step'])}")
                save_last_and_resume(run, state, draw=len(state.history) % PLOT_EVERY_EVALS == 0)
                t_window, window_tokens = time.perf_counter(), 0
                if c["patience"] and state.bad_evals >= c["patience"]:
                    early = True
                    say(f"early stopping: no improvement in {state.bad_evals} evaluations")
                    break
            if processes.agree(stop.requested, run.accelerator.device):
                stopped = True
                break
        if stopped:
            save_last_and_resume(run, state, draw=True)
    if stopped:
        launch = f"the same {run.world}-process launch of " if run.world > 1 else ""
        say(f"stopped at step {state.step}/{run.total}; state saved. Resume with {launch}bardterm train --output "
            f"{run.run_dir} --resume")
        return 130
    finish(run, state, early=early)
    best = state.best
    if best["val_loss"] is not None:
        say(f"done: best val loss {best['val_loss']:.4f} ({best['nats_per_char']:.4f} nats/char, "
            f"{best['nats_per_char'] / math.log(2):.4f} bits/char) at step {best['step']}; saved in {run.run_dir}")
    return 0
