"""The training loop, nanoGPT-style, on Hugging Face Accelerate (CPU, one GPU, or many via `accelerate launch`).

    for step in range(start, total):
        lr = warmup-then-cosine(step)
        for each micro-batch (grad accumulation): forward, loss, backward     (no gradient sync until the last)
        clip gradients; optimizer step
        every eval_interval steps: full validation pass, save last + resume state, save best, early stopping

Ctrl+C (or SIGTERM) asks the loop to stop after the current step; it then saves `last/` and `resume/` and
returns 130. A second Ctrl+C aborts at once (the previous saved state stays valid). `--resume` reloads the
weights, optimizer state and RNG states, and the data order is a pure function of (seed, step) (see
batches.py), so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import signal
import time
from contextlib import nullcontext
from pathlib import Path

from bardterm.errors import BardtermError

PLOT_EVERY_EVALS = 10  # loss.png is redrawn every this many evaluations, on Ctrl+C, and at the end


def lr_at(step: int, total: int, lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `min_ratio * lr` at step `total`."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def default_run_name(config: dict) -> str:
    dataset = Path(str(config["dataset"]).removeprefix("hf:")).name or "data"
    base = "scratch-" + config["preset"] if config["base"] == "scratch" else Path(config["base"]).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{dataset}-{base}").strip("-") or "run"


def run_dir_for(config: dict) -> Path:
    if config.get("output"):
        return Path(config["output"]).expanduser()
    return Path("checkpoints") / (config.get("run_name") or default_run_name(config))


def _nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_output(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise BardtermError("--resume and --overwrite contradict each other; pick one")
    if run_dir.exists() and not run_dir.is_dir():
        raise BardtermError(f"output {run_dir} exists and is not a directory; pick another --output")
    if resume:
        return
    if _nonempty_dir(run_dir) and not overwrite:
        raise BardtermError(
            f"output directory {run_dir} already exists; pass --resume to continue that run, --overwrite to "
            "replace it, or choose another --output/--run-name"
        )


def probe_writable(run_dir: Path) -> None:
    """Create the run directory (if needed) and a probe file in it; one clear line if that fails."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise BardtermError(
            f"cannot write to output directory {run_dir} ({error.strerror or error}); choose a writable --output"
        ) from None


def hardware(accelerator) -> dict:
    import torch

    info = {
        "device": str(accelerator.device),
        "processes": accelerator.num_processes,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if accelerator.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(accelerator.device)
    return info


class _StopFlag:
    """First SIGINT/SIGTERM: stop after this step and save. Second: abort now."""

    def __init__(self, console):
        self.requested = False
        self.console = console
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.console.print("[yellow]stopping after this step and saving a resumable state "
                           "(Ctrl+C again to abort without saving)[/yellow]")

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _plot(history: list, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # plotting is a convenience; never fail a run over it
        return
    train = [(h["step"], h["train_loss"]) for h in history if h.get("train_loss") is not None]
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if not train and not val:
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if val:
        ax.plot(*zip(*val), label="validation loss", color="tab:orange", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        plt.close(fig)


def _mixed_precision(choice: str) -> str:
    import torch

    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _emulated_bf16(mp: str) -> bool:
    """bf16 autocast on a CPU without native bf16 (avx512_bf16 or AMX): torch emulates it, ~12x slower than fp32."""
    import torch

    if mp != "bf16" or torch.cuda.is_available():
        return False
    native = (getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)()
              or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return not native


def attn_dropout(config: dict) -> float:
    """Dropout on attention probabilities: --attn-dropout, else --dropout (as every run before the flag existed)."""
    return config["dropout"] if config.get("attn_dropout") is None else config["attn_dropout"]


def load_base(config: dict):
    """(model, tokenizer) of a pretrained base: a local directory, or a Hub id fetched into the Hugging Face cache
    (safetensors only) through the same resolver as every other command (hub.py)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from bardterm.hub_cli import resolve_with_progress

    hf_logging.disable_progress_bar()
    base = config["base"]
    try:
        path = resolve_with_progress(base)
    except BardtermError as error:
        raise BardtermError(f"{error}; or train from scratch with --base scratch --preset small") from None
    if not path.is_dir():
        raise BardtermError(f"base {base} is not a directory; give a checkpoint directory, a Hub id, or --base scratch")
    try:
        model_config = AutoConfig.from_pretrained(path)
        for key in ("resid_pdrop", "embd_pdrop", "dropout", "hidden_dropout"):
            if hasattr(model_config, key):
                setattr(model_config, key, config["dropout"])
        for key in ("attn_pdrop", "attention_dropout"):
            if hasattr(model_config, key):
                setattr(model_config, key, attn_dropout(config))
        # float32 master weights whatever the storage dtype (the shipped checkpoint is float16, and Adam
        # in float16 diverges at step 2); mixed precision stays the choice of --mixed-precision.
        model = AutoModelForCausalLM.from_pretrained(path, config=model_config, use_safetensors=True,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BardtermError(f"cannot load base model {base!r} ({first[:160]}); check the id or directory") from None
    return model, tokenizer


def build_scratch(config: dict, tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from bardterm.training.tokenizer import bos_id

    vocab = len(tokenizer)
    model_config = GPT2Config(
        vocab_size=vocab,
        n_positions=config["block_size"],
        n_embd=config["n_embd"],
        n_layer=config["n_layer"],
        n_head=config["n_head"],
        resid_pdrop=config["dropout"],
        embd_pdrop=config["dropout"],
        attn_pdrop=attn_dropout(config),  # 0: SDPA's fused kernel, no (batch, heads, T, T) probabilities or masks
        activation_function=config["activation"],
        bos_token_id=bos_id(tokenizer),
        eos_token_id=bos_id(tokenizer),
        tie_word_embeddings=config["tie_weights"],
    )
    torch.manual_seed(config["seed"])
    model = GPT2LMHeadModel(model_config)
    return model


def _retokenize(config: dict, tokenizer, dataset):
    """Each epoch's own training tokens, seeded by (seed, epoch), with speaker renaming and/or BPE-dropout;
    None when both are off (every epoch then uses the same tokens)."""
    if not config.get("bpe_dropout") and not config.get("rename_speakers"):
        return None
    import torch

    from bardterm.training.bpe_dropout import BPEDropout
    from bardterm.training.rename import SpeakerRenamer
    from bardterm.training.tokenizer import encode

    text = dataset.splits["train"]
    try:
        renamer = SpeakerRenamer(text, config["rename_speakers"])
    except ValueError as error:
        raise BardtermError(f"--rename-speakers: {error}; drop the flag for this dataset") from None
    try:
        dropper = BPEDropout(tokenizer, config["bpe_dropout"]) if config["bpe_dropout"] else None
    except (ValueError, AttributeError):
        raise BardtermError(f"--bpe-dropout needs a byte-level BPE tokenizer, which {config['base']} does not "
                            "have; drop the flag") from None

    rename_epochs = config.get("rename_epochs") or 0  # absent from configs saved before it existed

    def tokens(epoch: int):
        seed = config["seed"] * 1_000_003 + epoch
        renaming = not rename_epochs or epoch < rename_epochs
        # 2 * seed + 1: renaming's own random stream, apart from BPE-dropout's
        epoch_text = renamer.rename(text, 2 * seed + 1) if renaming else text
        return torch.tensor(dropper.encode(epoch_text, seed), dtype=torch.long) if dropper else encode(
            tokenizer, epoch_text)

    return tokens


def make_optimizer(model, config: dict):
    import torch

    decay, no_decay = [], []
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    betas = (config["beta1"], config["beta2"])
    if config["optimizer"] == "muon":
        from bardterm.training.muon import Muon, hidden_matrices

        hidden = hidden_matrices(model)
        groups = [{"params": [p for p in decay if id(p) in hidden], "weight_decay": config["weight_decay"],
                   "use_muon": True},
                  {"params": [p for p in decay if id(p) not in hidden], "weight_decay": config["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        return Muon(groups, lr=config["lr"], betas=betas)
    if config["optimizer"] == "lion":
        try:
            from lion_pytorch import Lion
        except ImportError:
            raise BardtermError("--optimizer lion needs the lion-pytorch package; `pip install lion-pytorch`") from None
        return Lion(groups, lr=config["lr"], betas=betas)
    return torch.optim.AdamW(groups, lr=config["lr"], betas=betas, foreach=True)


def train(config: dict, *, resume: bool = False, overwrite: bool = False, show_progress: bool | None = None,
          on_step=None) -> int:
    """Run (or resume) training. Returns 0 when finished, 130 when stopped by Ctrl+C after saving."""
    from bardterm import __version__
    from bardterm.data import load_dataset

    t_start = time.time()
    run_dir = run_dir_for(config)
    check_output(run_dir, resume=resume, overwrite=overwrite)
    saved_state = None
    if resume:
        from bardterm.training.checkpoint import read_resume_state
        from bardterm.training.recipes import DEFAULTS, RESUME_OVERRIDABLE

        saved_state = read_resume_state(run_dir)
        saved_config = {**DEFAULTS, **saved_state["config"]}  # a run saved before a setting existed had its default
        changed = {k for k in config if k in saved_config and k not in RESUME_OVERRIDABLE
                   and config.get("_explicit", {}).get(k) and config[k] != saved_config[k]}
        if changed:
            names = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(changed))
            raise BardtermError(f"{names} differ from the run being resumed in {run_dir}; drop them to resume exactly, "
                                "or start a new run")
        merged = dict(saved_config)
        for key in RESUME_OVERRIDABLE:
            if config.get("_explicit", {}).get(key):
                merged[key] = config[key]
        merged["output"] = str(run_dir)
        config = merged
    config = {k: v for k, v in config.items() if not k.startswith("_")}

    dataset = load_dataset(config["dataset"], data_file=config.get("data_file"))
    if saved_state and saved_state.get("dataset_sha256") not in (None, dataset.sha256):
        raise BardtermError(f"dataset {dataset.name} is not the text the run in {run_dir} was trained on (sha256 "
                            "differs), so it cannot resume exactly; point it at the same data or start a new run")

    import torch
    from accelerate import Accelerator

    if config.get("threads"):
        torch.set_num_threads(config["threads"])

    from bardterm.training import checkpoint as ckpt
    from bardterm.training.average import WeightAverage
    from bardterm.training.batches import BlockStream
    from bardterm.training.evaluate import evaluate_ids
    from bardterm.training.tokenizer import bos_id, encode, train_bpe

    # Model and tokenizer.
    if config["base"] == "scratch":
        if resume and (run_dir / "last" / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(run_dir / "last")
        else:
            tokenizer = train_bpe(dataset.splits["train"], config["vocab_size"],
                                  model_max_length=config["block_size"])
        model = build_scratch(config, tokenizer)
    else:
        model, tokenizer = load_base(config)
        n_positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
        if config.get("block_size") is None:
            config["block_size"] = min(256, n_positions)
        if config["block_size"] > n_positions:
            raise BardtermError(f"--block-size {config['block_size']} is longer than {config['base']}'s context "
                                f"({n_positions}); use at most {n_positions}")
    block = config["block_size"]

    train_ids = encode(tokenizer, dataset.splits["train"])
    val_text = dataset.splits["validation"]
    val_ids = encode(tokenizer, val_text)
    if len(train_ids) < block + 1:
        raise BardtermError(
            f"dataset {dataset.name} is too short: its training split has {len(train_ids)} tokens, fewer than one "
            f"block of {block}+1; use a smaller --block-size or more text"
        )
    if len(val_ids) < 1:
        raise BardtermError(f"dataset {dataset.name} has an empty validation split; give it more text")

    mp = _mixed_precision(config["mixed_precision"])
    if mp != "no" and not torch.cuda.is_available() and mp == "fp16":
        raise BardtermError("--mixed-precision fp16 needs a GPU; use bf16 or no on a CPU")
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mp:
        AcceleratorState._reset_state()  # a second run in one process (tests, benchmarks) with other settings
    accelerator = Accelerator(mixed_precision=mp)
    world = accelerator.num_processes
    rank = accelerator.process_index
    global_batch = config["batch_size"] * config["grad_accum"] * world
    stream = BlockStream(train_ids, block, config["seed"], retokenize=_retokenize(config, tokenizer, dataset))
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

    model.to(accelerator.device)
    optimizer = make_optimizer(model, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    average = WeightAverage(raw_model, config["ema"]) if config.get("ema") else None
    averaged = average.model if average else None
    evaluated = averaged if averaged is not None else raw_model  # what is evaluated, selected and saved

    history: list = []
    best = {"val_loss": None, "step": None}
    bad_evals = 0
    step = 0
    tokens_seen = 0
    elapsed_before = 0.0
    if resume:
        state = ckpt.load_resume(run_dir, raw_model, optimizer, average=averaged)
        if average:
            average.updates = state["ema_updates"]
        step = state["step"]
        history = state["history"]
        best = state["best"]
        bad_evals = state["bad_evals"]
        tokens_seen = state["tokens_seen"]
        elapsed_before = state["wall_time"]
        if state.get("total_steps") and state["total_steps"] != total:
            accelerator.print(f"note: run length changed from {state['total_steps']} to {total} steps; "
                              "the learning-rate schedule stretches to match")
    n_params = sum(p.numel() for p in raw_model.parameters())
    hw = hardware(accelerator)

    def meta(kind: str) -> dict:
        b = best.get("val_loss")
        best_block = None
        if b is not None:
            nats = best["nats_per_char"]
            best_block = {"step": best["step"], "val_loss": b, "perplexity": math.exp(min(b, 700)),
                          "nats_per_char": nats, "bits_per_char": nats / math.log(2)}
        return {
            "bardterm_version": __version__,
            "kind": kind,
            "dataset": {"name": dataset.name, "sha256": dataset.sha256, "source": dataset.source,
                        "chars": {k: len(v) for k, v in dataset.splits.items()},
                        "tokens": {"train": len(train_ids), "validation": len(val_ids)}},
            "base": config["base"],
            "config": config,
            "derived": {"total_steps": total, "global_batch": global_batch, "tokens_per_step": global_batch * block,
                        "steps_per_epoch": steps_per_epoch, "parameters": n_params, "vocab_size": len(tokenizer),
                        "mixed_precision": mp},
            "step": step,
            "epoch": step / steps_per_epoch,
            "tokens_seen": tokens_seen,
            "best": best_block,
            "metrics": history,
            "wall_time_s": elapsed_before + (time.time() - t_start),
            "hardware": hw,
            "eval_method": "non-overlapping windows of block_size over the whole validation split; "
                           "nats/char = total nats / characters",
        }

    def trainer_state() -> dict:
        return {"step": step, "total_steps": total, "config": config, "dataset_sha256": dataset.sha256,
                "history": history, "best": best,
                "bad_evals": bad_evals, "tokens_seen": tokens_seen, "window_losses": window_losses,
                "recent_losses": recent_losses, "ema_updates": average.updates if average else None,
                "wall_time": elapsed_before + (time.time() - t_start), "bardterm_version": __version__}

    def save_last_and_resume(plot: bool = False):
        if accelerator.is_main_process:
            ckpt.save_model_dir(evaluated, tokenizer, meta("last"), run_dir / "last", top_level=False)
            ckpt.save_resume(run_dir, raw_model, optimizer, trainer_state(), average=averaged)
            if plot:
                _plot(history, run_dir / "loss.png")
        accelerator.wait_for_everyone()

    def evaluate_now(train_loss):
        nonlocal bad_evals
        t0 = time.perf_counter()
        m = evaluate_ids(evaluated, val_ids, len(val_text), block, bos=bos_id(tokenizer),
                         batch_size=config["eval_batch_size"], device=accelerator.device,
                         autocast=accelerator.autocast)
        raw_model.train()
        record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "train_loss": train_loss,
                  "val_loss": m["loss"], "val_nats_per_char": m["nats_per_char"],
                  "val_bits_per_char": m["bits_per_char"], "lr": lr_at(max(0, step - 1), total, config["lr"],
                                                                         config["warmup_steps"], config["min_lr_ratio"]),
                  "tokens_seen": tokens_seen, "wall_time": round(elapsed_before + time.time() - t_start, 2),
                  "eval_s": round(time.perf_counter() - t0, 2)}
        history.append(record)
        improved = best["val_loss"] is None or m["loss"] < best["val_loss"] - config["min_delta"]
        if improved:
            best.update(val_loss=m["loss"], step=step, nats_per_char=m["nats_per_char"])
            bad_evals = 0
            if accelerator.is_main_process:
                ckpt.save_model_dir(evaluated, tokenizer, meta("best"), run_dir, top_level=True)
        else:
            bad_evals += 1
        return record, improved

    from rich.console import Console

    console = Console(stderr=False)
    if not console.is_terminal:
        console = Console(stderr=False, width=200, soft_wrap=True)
    interactive = console.is_terminal if show_progress is None else show_progress
    say = console.print if accelerator.is_main_process else (lambda *a, **k: None)
    say(f"[bold]training[/bold] {n_params / 1e6:.2f}M parameters ({config['base']}"
        f"{' ' + config['preset'] if config['base'] == 'scratch' else ''}), vocab {len(tokenizer)}, "
        f"block {block}, batch {global_batch}, {total} steps ({total / steps_per_epoch:.2f} epochs of "
        f"{len(train_ids)} tokens), {config['optimizer']} lr {config['lr']:g}, device {accelerator.device}"
        f"{', ' + mp if mp != 'no' else ''} -> {run_dir}"
        + (f" (resuming at step {step})" if resume else ""))
    if _emulated_bf16(mp):
        say("[yellow]note:[/yellow] this CPU has no native bf16 (avx512_bf16 or AMX), so bf16 autocast is emulated "
            "and about 12x slower than fp32; stop and add --mixed-precision no")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("step"), MofNCompleteColumn(), BarColumn(),
        TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[tps]} tok/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=not (interactive and accelerator.is_main_process), transient=False,
    )
    last_val = history[-1]["val_loss"] if history else None
    window_losses: list[float] = list(state.get("window_losses", [])) if resume else []
    recent_losses: list[float] = list(state.get("recent_losses", [])) if resume else []  # so a resumed log reads the same
    t_window = time.perf_counter()
    window_tokens = 0
    tokens_per_micro = config["batch_size"] * block
    stopped = False
    early = False

    raw_model.train()
    with _StopFlag(console) as stop, progress:
        task = progress.add_task("train", total=total, completed=step, loss="-",
                                 val=f"{last_val:.3f}" if last_val is not None else "-", tps="-")
        while step < total:
            lr = lr_at(step, total, config["lr"], config["warmup_steps"], config["min_lr_ratio"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for micro in range(config["grad_accum"]):
                first = (step * config["grad_accum"] + micro) * config["batch_size"] * world + rank * config["batch_size"]
                x, y = stream.batch(first, config["batch_size"])
                x, y = x.to(accelerator.device), y.to(accelerator.device)
                sync = micro == config["grad_accum"] - 1
                with (nullcontext() if sync else accelerator.no_sync(model)):
                    with accelerator.autocast():
                        logits = model(input_ids=x).logits
                    loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
                    accelerator.backward(loss / config["grad_accum"])
                step_loss += loss.item() / config["grad_accum"]
            if config["grad_clip"] > 0:
                accelerator.clip_grad_norm_(model.parameters(), config["grad_clip"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if average:
                average.update()
            step += 1
            tokens_seen += tokens_per_micro * config["grad_accum"] * world
            window_tokens += tokens_per_micro * config["grad_accum"] * world
            window_losses.append(step_loss)
            recent_losses.append(step_loss)
            if not math.isfinite(step_loss):
                save_last_and_resume()
                raise BardtermError(f"training diverged at step {step} (loss {step_loss}); lower --lr or raise "
                                    "--warmup-steps, then start again with --overwrite")
            now = time.perf_counter()
            tps = window_tokens / max(1e-9, now - t_window)
            progress.update(task, completed=step, loss=f"{sum(recent_losses[-20:]) / len(recent_losses[-20:]):.3f}",
                            tps=f"{tps:,.0f}")
            if step % config["log_interval"] == 0 and (progress.disable and accelerator.is_main_process):
                say(f"step {step}/{total} loss {sum(recent_losses) / len(recent_losses):.4f} lr {lr:.2e} "
                    f"{tps:,.0f} tok/s elapsed {elapsed_before + time.time() - t_start:,.0f}s")
            if step % config["log_interval"] == 0:
                recent_losses = []
                t_window, window_tokens = time.perf_counter(), 0
            if on_step is not None:
                on_step(step)
            if step % config["eval_interval"] == 0 or step == total:
                train_loss = sum(window_losses) / len(window_losses)
                window_losses = []
                record, improved = evaluate_now(train_loss)
                last_val = record["val_loss"]
                progress.update(task, val=f"{last_val:.3f}")
                say(f"eval step {step}: train {train_loss:.4f}  val {record['val_loss']:.4f}  "
                    f"val nats/char {record['val_nats_per_char']:.4f}  ({record['val_bits_per_char']:.4f} bits/char)"
                    f"{'  best, saved' if improved else '  (best %.4f at step %s)' % (best['val_loss'], best['step'])}")
                save_last_and_resume(plot=len(history) % PLOT_EVERY_EVALS == 0)
                t_window, window_tokens = time.perf_counter(), 0
                if config["patience"] and bad_evals >= config["patience"]:
                    early = True
                    say(f"early stopping: no improvement in {bad_evals} evaluations")
                    break
            if stop.requested:
                stopped = True
                break
        if stopped:
            save_last_and_resume(plot=True)
    if stopped:
        say(f"stopped at step {step}/{total}; state saved. Resume with: bardterm train --output {run_dir} --resume")
        return 130
    if not history or history[-1]["step"] != step:
        save_last_and_resume()
    if accelerator.is_main_process and best["val_loss"] is not None:
        # Refresh the best checkpoint's bardterm.json so it carries the full history and wall time.
        import json

        meta_path = run_dir / "bardterm.json"
        try:
            best_meta = json.loads(meta_path.read_text())
            final = meta("best")
            final["step"] = best_meta.get("step")
            final["epoch"] = best_meta.get("epoch")
            final["tokens_seen"] = best_meta.get("tokens_seen")
            final["finished"] = {"step": step, "early_stopped": early}
            ckpt.atomic_write_json(meta_path, final)
        except (OSError, ValueError):
            pass
        _plot(history, run_dir / "loss.png")
    b = best
    if b["val_loss"] is not None:
        say(f"done: best val loss {b['val_loss']:.4f} ({b['nats_per_char']:.4f} nats/char, "
            f"{b['nats_per_char'] / math.log(2):.4f} bits/char) at step {b['step']}; saved in {run_dir}")
    return 0
