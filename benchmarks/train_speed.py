"""Training throughput: bardterm's loop against transformers' `Trainer`, side by side in one run.

Both train the same freshly initialised GPT-2 (same seed, shape, vocabulary) on the same tiny_shakespeare
tokens, with the same batch size, sequence length, optimizer (AdamW), learning-rate schedule (warmup + cosine),
gradient clipping and dropout, on the CPU. Each side runs `--steps` optimizer steps; the first `--skip`
steps are warm-up and not timed. Throughput = trained tokens / seconds between the end of step `skip` and the
end of the last step, taken from a per-step callback inside each loop, so start-up, tokenization, evaluation
and saving are excluded on both sides. The sides alternate for `--rounds` rounds (bardterm, Trainer,
bardterm, ...) so that a noisy, shared CPU affects both alike; the ratio uses the best round of each (the
round least disturbed by other jobs; the first round also pays the process's one-time warm-up), and the
median is printed too.

    python benchmarks/train_speed.py --data-file ../shared/data/tiny_shakespeare/input.txt
    python benchmarks/train_speed.py --quick            # a smaller model and fewer steps

Writes the report to stdout and to --output (default benchmarks/results/train_speed.txt).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-file", default=os.environ.get("BARDTERM_TINY_SHAKESPEARE"),
                   help="local tiny_shakespeare (default: $BARDTERM_TINY_SHAKESPEARE, else the cache/download)")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="2 layers x 128, block 128, 20 steps")
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "train_speed.txt"))
    args = p.parse_args(argv)
    if args.quick:
        args.n_layer, args.n_embd, args.block_size, args.steps, args.skip = 2, 128, 128, 20, 4
    return args


def bardterm_side(args, workdir: Path, data_file) -> float:
    from bardterm.training.loop import train
    from bardterm.training.recipes import resolve

    stamps = {}

    def on_step(step):
        stamps[step] = time.perf_counter()

    config = resolve({
        "dataset": "tiny_shakespeare", "data_file": data_file, "base": "scratch", "preset": "small",
        "n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd, "vocab_size": args.vocab_size,
        "block_size": args.block_size, "batch_size": args.batch_size, "max_steps": args.steps,
        "eval_interval": 10**9, "warmup_steps": 10, "dropout": 0.1, "lr": 1e-3, "weight_decay": 0.1,
        "grad_clip": 1.0, "seed": 1337, "log_interval": 10**9, "output": str(workdir / f"bt-{time.time_ns()}"),
    })
    train(config, show_progress=False, on_step=on_step)
    timed = args.steps - args.skip
    return timed * args.batch_size * args.block_size / (stamps[args.steps] - stamps[args.skip])


def trainer_side(args, workdir: Path, tokenizer, train_ids) -> float:
    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments,
                              default_data_collator)
    from transformers.utils import logging as hf_logging

    from bardterm.training.batches import BlockStream

    hf_logging.set_verbosity_error()
    stream = BlockStream(train_ids, args.block_size, 1337)

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return stream.n_blocks

        def __getitem__(self, i):
            start = stream.starts(i, 1)[0]
            ids = train_ids[start:start + args.block_size]
            return {"input_ids": ids, "labels": ids}

    torch.manual_seed(1337)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=args.block_size, n_embd=args.n_embd, n_layer=args.n_layer,
        n_head=args.n_head, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, bos_token_id=0, eos_token_id=0))
    stamps = {}

    class Stamp(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            stamps[state.global_step] = time.perf_counter()

    targs = TrainingArguments(
        output_dir=str(workdir / f"hf-{time.time_ns()}"), per_device_train_batch_size=args.batch_size,
        max_steps=args.steps, learning_rate=1e-3, weight_decay=0.1, warmup_steps=10, lr_scheduler_type="cosine",
        max_grad_norm=1.0, adam_beta2=0.99, logging_steps=10**9, save_strategy="no", eval_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, seed=1337, disable_tqdm=True,
    )
    Trainer(model=model, args=targs, train_dataset=Blocks(), data_collator=default_data_collator,
            callbacks=[Stamp()]).train()
    timed = args.steps - args.skip
    return timed * args.batch_size * args.block_size / (stamps[args.steps] - stamps[args.skip])


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    from bardterm.data import load_dataset
    from bardterm.training.tokenizer import encode, train_bpe

    dataset = load_dataset("tiny_shakespeare", data_file=args.data_file)
    tokenizer = train_bpe(dataset.splits["train"], args.vocab_size)
    train_ids = encode(tokenizer, dataset.splits["train"])
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            ours.append(bardterm_side(args, Path(tmp), args.data_file))
            print(f"round {r + 1}: bardterm {ours[-1]:,.0f} tok/s", flush=True)
            theirs.append(trainer_side(args, Path(tmp), tokenizer, train_ids))
            print(f"round {r + 1}: Trainer  {theirs[-1]:,.0f} tok/s", flush=True)
    a, b = max(ours), max(theirs)
    ma, mb = statistics.median(ours), statistics.median(theirs)
    cpu = cpu_name()
    lines = [
        "bardterm train vs transformers Trainer: training throughput on CPU (benchmarks/train_speed.py)",
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"hardware: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, python {platform.python_version()}",
        f"model: GPT-2 {args.n_layer} layers x {args.n_embd} wide, {args.n_head} heads, vocab {len(tokenizer)} "
        f"(byte-level BPE), dropout 0.1; data: tiny_shakespeare train split",
        f"batch {args.batch_size} x seq {args.block_size} = {args.batch_size * args.block_size} tokens/step, "
        f"AdamW + warmup/cosine + clip 1.0, fp32; {args.steps} steps per side, first {args.skip} untimed; "
        f"{args.rounds} alternating rounds",
        f"bardterm  tok/s per round: {', '.join(f'{x:,.0f}' for x in ours)}  (best {a:,.0f}, median {ma:,.0f})",
        f"Trainer   tok/s per round: {', '.join(f'{x:,.0f}' for x in theirs)}  (best {b:,.0f}, median {mb:,.0f})",
        f"ratio bardterm / Trainer: {a / b:.3f}x best-of-rounds, {ma / mb:.3f}x median  (target >= 1.0x)",
        "note: the CPU is shared with other jobs, so absolute numbers vary; the alternating rounds keep the ratio fair.",
    ]
    write_report(lines, args.output)
    return 0


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def write_report(lines: list[str], output: str) -> None:
    """Print the report and write it to `output` (the README points at benchmarks/results/)."""
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)


if __name__ == "__main__":
    sys.exit(main())
