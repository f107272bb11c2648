"""The lean decode step against the model's own forward, same engine, same model, same run (issue 26).

    python benchmarks/lean_step_speed.py            # SmolLM2-135M-shaped Llama, 1 and 2 threads, fp32/bf16/int8
    python benchmarks/lean_step_speed.py --quick    # smoke test: a small Llama, 16 tokens, 1 repeat, prints only

bardterm's engine generates greedily, batch 1, exactly N tokens, once with the lean step (decode_step.py) and
once with it switched off here (the engine then calls the model for every token, as for an architecture without
one); the two alternate within each repeat so that the machine's load hits both alike. Decode tok/s counts from
the first new token to the last (the lean step changes only those); the ratio is the median over repeats of lean
/ model in the same repeat. "same ids": both runs gave the same greedy ids. The floor is the model's weight
products alone, one token at a time, in the same precision (median over the repeats, measured
between them): what no exact step can beat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's bardterm
from generate_speed import PROMPT, REPO, describe_machine, make_tokenizer, write_atomically  # noqa: E402
from llamacpp_speed import MODELS, QUICK_MODELS, cpu_flags_line  # noqa: E402

from bardterm import engine, precision  # noqa: E402
from bardterm.engine import Generation  # noqa: E402
from bardterm.lean_step import linear  # noqa: E402
from bardterm.registry import build  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "lean_step_speed.txt"
MODEL = "SmolLM2-135M-shaped"
PRECISIONS = ("float32", "bfloat16", "int8")
STEPS = ("lean", "model")


def make_model(shape: dict, name: str):
    """The Llama in precision `name`, as models.load_checkpoint makes it (int8: bf16 activations where native)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    choice = precision.resolve(name, "cpu")
    model = LlamaForCausalLM(LlamaConfig(**shape, bos_token_id=0, eos_token_id=0)).eval()
    model = model.to(getattr(torch, choice.load_dtype))
    precision.apply(model, choice)
    return model


def run(model, tokenizer, tokens: int, lean: bool) -> tuple[float, list[int]]:
    """Decode seconds per token after the first, and the greedy ids."""
    original = engine.fast_decode_step
    engine.fast_decode_step = original if lean else (lambda model: None)
    try:
        generation = Generation(model, tokenizer, PROMPT, build("greedy", chain=[]), max_new_tokens=tokens,
                                min_new_tokens=tokens)
        first = None
        for _ in generation:
            first = first or time.perf_counter()
        return (time.perf_counter() - first) / (tokens - 1), generation.result.token_ids
    finally:
        engine.fast_decode_step = original


def matmul_floor(model, tokens: int = 16) -> float:
    """Seconds per token for the weight products alone (batch 1, the same layer functions as the lean step)."""
    products = [linear(m) for m in model.modules() if linear(m) is not None]
    dtype = model.model.norm.weight.dtype  # the activations' type (int8: bf16 where native)
    inputs = [torch.randn(1, m.in_features, dtype=dtype) for m in model.modules() if linear(m) is not None]

    def one_token():
        for product, x in zip(products, inputs):
            product(x)

    with torch.inference_mode():
        one_token()
        started = time.perf_counter()
        for _ in range(tokens):
            one_token()
    return (time.perf_counter() - started) / tokens


def benchmark(shape: dict, tokenizer, threads_list: list[int], tokens: int, repeats: int, log) -> None:
    for name in PRECISIONS:
        model = make_model(shape, name)
        for threads in threads_list:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                for lean in (True, False):  # warm-up: first calls pay one-off costs
                    run(model, tokenizer, 4, lean)
                times, ids, floors = {step: [] for step in STEPS}, {}, []
                for repeat in range(repeats):
                    for step in STEPS if repeat % 2 == 0 else STEPS[::-1]:
                        seconds, ids[step] = run(model, tokenizer, tokens, step == "lean")
                        times[step].append(seconds)
                    floors.append(matmul_floor(model))
            ratios = sorted(plain / lean for lean, plain in zip(times["lean"], times["model"]))
            lean_s, model_s = (statistics.median(times[step]) for step in STEPS)
            floor = statistics.median(floors)
            log(f"{threads:>2} {name:<9} {1 / lean_s:8.1f} {lean_s * 1000:8.2f} | {1 / model_s:8.1f} "
                f"{model_s * 1000:8.2f} | {statistics.median(ratios):5.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) | "
                f"{floor * 1000:6.2f} {'yes' if ids['lean'] == ids['model'] else 'NO':>5}")
        del model


HEADER = (f"{'th':>2} {'dtype':<9} {'tok/s':>8} {'ms/tok':>8} | {'tok/s':>8} {'ms/tok':>8} | {'ratio (range)':<17} | "
          f"{'floor':>6} {'same':>5}\n"
          f"{'':<12} {'lean step':-^17} | {'model forward':-^17} | {'lean / model':<17} | {'ms/tok':>6} {'ids':>5}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: a small Llama, 16 tokens, 1 repeat")
    parser.add_argument("--tokens", type=int, help="new tokens per run (default 64, quick 16)")
    parser.add_argument("--repeats", type=int, help="runs per configuration (default 3, quick 1)")
    parser.add_argument("--threads", type=int, nargs="+", help="torch thread counts (default 1 2)")
    parser.add_argument("--output", type=Path, help=f"where to write the results (default {RESULTS}, not in quick)")
    args = parser.parse_args(argv)
    tokens = args.tokens or (16 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 3)
    output = args.output or (None if args.quick else RESULTS)
    shape = (QUICK_MODELS if args.quick else MODELS)[MODEL][1]
    lines = [describe_machine(), cpu_flags_line(),
             f"{MODEL} ({shape}), random weights; {tokens} new tokens, batch 1, greedy, median of {repeats} "
             "alternating runs; decode tok/s from the first new token to the last", "", HEADER]
    print("\n".join(lines), flush=True)

    def log(line):
        print(line, flush=True)
        lines.append(line)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        tokenizer = make_tokenizer(shape["vocab_size"], Path(root))
    benchmark(shape, tokenizer, args.threads or [1, 2], tokens, repeats, log)
    log(f"\n(load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"{time.perf_counter() - started:.0f} s in all)")
    if output:
        write_atomically(output, "\n".join(lines) + "\n")
        print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
