"""Training throughput of the model options that change only speed or regularization, side by side in one run.

The reference is trial 14's recipe, whose model and optimizer every checkpoint shipped since shares (GPT-2
6x256, vocabulary 4096, block 256, batch 16, Muon, dropout 0.2 everywhere, GPT-2's `gelu_new`). Against it:

- `--activation gelu_pytorch_tanh`: the same tanh-approximated GELU as one fused kernel instead of five
  elementwise ops (the same function; it changes only rounding);
- `--attn-dropout 0`: no dropout on the attention probabilities, so SDPA can take its fused kernel instead of
  materialising (batch, heads, T, T) probabilities and a random mask (this one changes regularization);
- both.

Every side runs bardterm's own training loop (`bardterm.training.loop.train`) for `--steps` optimizer steps
on one thread, the first `--skip` untimed; tokens/s comes from a per-step callback, so tokenization,
evaluation and saving are excluded. The sides alternate for `--rounds` rounds so that a shared CPU affects
all alike; ratios use each side's best round.

    python benchmarks/train_options_speed.py --data-file ../shared/data/tiny_shakespeare/input.txt

Writes the report to stdout and to --output (default benchmarks/results/train_options_speed.txt).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train_speed import cpu_name, write_report  # noqa: E402  (benchmarks/ is on the path when run as a script)

SIDES = {
    "reference (trial 14)": {},
    "fused GELU": {"activation": "gelu_pytorch_tanh"},
    "attention dropout 0": {"attn_dropout": 0.0},
    "both": {"activation": "gelu_pytorch_tanh", "attn_dropout": 0.0},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-file", default=os.environ.get("BARDTERM_TINY_SHAKESPEARE"),
                   help="local tiny_shakespeare (default: $BARDTERM_TINY_SHAKESPEARE, else the cache/download)")
    p.add_argument("--mixed-precision", choices=("no", "bf16"), default="bf16",
                   help="bf16 autocast (default; fast where the CPU has avx512_bf16 or AMX) or no (fp32)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--skip", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "train_options_speed.txt"))
    return p.parse_args(argv)


def side(args, workdir: Path, options: dict) -> float:
    from bardterm.training.loop import train
    from bardterm.training.recipes import load_recipe, resolve

    stamps = {}
    recipe = load_recipe(REPO / "train" / "shakespeare-v4096-muon.toml")
    config = resolve({**options, "data_file": args.data_file, "max_steps": args.steps, "threads": 1,
                      "mixed_precision": args.mixed_precision, "eval_interval": 10**9, "log_interval": 10**9,
                      "output": str(workdir / f"run-{time.time_ns()}")}, recipe)
    train(config, show_progress=False, on_step=lambda step: stamps.__setitem__(step, time.perf_counter()))
    return (args.steps - args.skip) * config["batch_size"] * config["block_size"] / (stamps[args.steps] - stamps[args.skip])


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    rates = {name: [] for name in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, options in SIDES.items():
                rates[name].append(side(args, Path(tmp), options))
                print(f"round {r + 1}: {name}: {rates[name][-1]:,.0f} tok/s", flush=True)
    reference = max(rates["reference (trial 14)"])
    lines = [
        "Training throughput of model options against trial 14's recipe (benchmarks/train_options_speed.py)",
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"hardware: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, one thread per side, python "
        f"{platform.python_version()}",
        f"model: train/trials/shakespeare-v4096-muon.toml (GPT-2 6x256, vocab 4096, block 256, batch 16, Muon, dropout 0.2), "
        f"{'bf16 autocast' if args.mixed_precision == 'bf16' else 'fp32'}; {args.steps} steps per side, first "
        f"{args.skip} untimed; {args.rounds} alternating rounds",
    ]
    for name, values in rates.items():
        lines.append(f"{name:22s} tok/s per round: {', '.join(f'{x:,.0f}' for x in values)}  "
                     f"(best {max(values):,.0f}, {max(values) / reference:.2f}x the reference)")
    lines.append("note: the CPU may be shared with other jobs; the alternating rounds keep the ratios fair.")
    write_report(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
