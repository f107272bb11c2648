"""Compare mode's speed: its setups as one lockstep batch (bardterm/batching.py, one model pass per token for all)
beside the same setups as separate generations, each in its own thread at the same time (as compare ran them
before), on the shipped checkpoint, in the same run.

    python benchmarks/compare_speed.py --threads 1 2  # 2, 3, 4 setups, 128 tokens, 5 repeats; writes results/
    python benchmarks/compare_speed.py --quick       # smoke test: 3 setups, 16 tokens, 1 repeat, prints only

Every setup makes exactly N tokens (min_new_tokens = max_new_tokens), so both ways do the same work. Tokens/s
counts every column's tokens over the wall time from the start to the last column's end; the two ways alternate
within each repeat, and the ratio is taken in each repeat (median and range). "same ids" checks that every column
has the same token ids both ways.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_speed import PROMPT, REPO, describe_machine, write_atomically  # noqa: E402

from bardterm.batching import run_all  # noqa: E402
from bardterm.engine import Generation  # noqa: E402
from bardterm.models import load_checkpoint  # noqa: E402
from bardterm.registry import build  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "compare_speed.txt"
CHECKPOINT = REPO / "checkpoints" / "shakespeare"
SETUPS = [  # what a person compares: greedy beside sampling setups with their own chains and seeds
    ("greedy", {"decoder": "greedy", "chain": []}, None),
    ("sample t=0.8", {"decoder": "sample", "temperature": 0.8}, 1),
    ("nucleus p=0.9", {"decoder": "sample", "top_p": 0.9}, 2),
    ("top-k 40 t=1.2", {"decoder": "sample", "top_k": 40, "temperature": 1.2}, 3),
]


def generations(loaded, count: int, tokens: int) -> list[Generation]:
    return [Generation(loaded.model, loaded.tokenizer, PROMPT, build(**settings), seed=seed, max_new_tokens=tokens,
                       min_new_tokens=tokens) for _, settings, seed in SETUPS[:count]]


def drain(generation: Generation) -> None:
    for _ in generation:
        pass


def separate(rows: list[Generation]) -> None:
    threads = [threading.Thread(target=drain, args=(row,)) for row in rows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def timed(way: str, loaded, count: int, tokens: int) -> tuple[float, list[list[int]]]:
    rows = generations(loaded, count, tokens)
    started = time.perf_counter()
    if way == "batched":
        run_all(rows)
    else:
        separate(rows)
    elapsed = time.perf_counter() - started
    assert all(row.result.stats.tokens == tokens for row in rows)
    return count * tokens / elapsed, [row.result.token_ids for row in rows]


def lscpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu: not available"
    keep = ("Model name", "Flags")
    return "\n".join("lscpu " + line.strip() for line in out.splitlines() if line.strip().startswith(keep))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 setups, 16 tokens, 1 repeat")
    parser.add_argument("--tokens", type=int, help="new tokens per setup (default 128)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 5)")
    parser.add_argument("--setups", type=int, nargs="+", help="how many setups, each (default 2 3 4)")
    parser.add_argument("--threads", type=int, nargs="+", help="torch threads, each (default: torch's own)")
    parser.add_argument("--dtype", default="float32", help="the precision to load in (default float32)")
    parser.add_argument("--output", help="where to write the results ('-': print only)")
    args = parser.parse_args(argv)
    tokens = args.tokens or (16 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 5)
    counts = args.setups or ([3] if args.quick else [2, 3, 4])
    output = args.output or ("-" if args.quick else str(RESULTS))

    loaded = load_checkpoint(CHECKPOINT, device="cpu", dtype=args.dtype)
    timed("batched", loaded, 2, 4)  # warm up: first calls allocate
    lines = [describe_machine(), lscpu(),
             f"checkpoint {CHECKPOINT.relative_to(REPO)} ({loaded.dtype}), {tokens} new tokens per setup, "
             f"median of {repeats} interleaved repeats; tok/s = every column's tokens / wall time; ratio = batched "
             "tok/s / separate tok/s in the same repeat",
             "", f"{'threads':<7} {'setups':<52} {'separate tok/s':>14} {'batched tok/s':>14} {'ratio (range)':>20} same ids"]
    print("\n".join(lines), flush=True)
    for threads, count in [(t, c) for t in args.threads or [torch.get_num_threads()] for c in counts]:
        torch.set_num_threads(threads)
        speeds: dict[str, list[float]] = {"separate": [], "batched": []}
        same = True
        for repeat in range(repeats):
            ways = ("separate", "batched") if repeat % 2 == 0 else ("batched", "separate")
            ids = {}
            for way in ways:
                speed, ids[way] = timed(way, loaded, count, tokens)
                speeds[way].append(speed)
            same = same and ids["separate"] == ids["batched"]
        ratios = [b / s for b, s in zip(speeds["batched"], speeds["separate"])]
        names = ", ".join(name for name, _, _ in SETUPS[:count])
        line = (f"{threads:<7} {names:<52} {statistics.median(speeds['separate']):>14.1f} "
                f"{statistics.median(speeds['batched']):>14.1f} "
                f"{statistics.median(ratios):>8.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) {'yes' if same else 'NO'}")
        print(line, flush=True)
        lines.append(line)
    if output != "-":
        previous = RESULTS.read_text() if RESULTS.exists() else ""
        earlier = previous.split("\n## Earlier runs\n", 1)[-1] if "## Earlier runs" in previous else previous
        write_atomically(Path(output), "\n".join(lines) + "\n\n## Earlier runs\n" + earlier)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
