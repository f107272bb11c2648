"""On a GPU: bardterm's engine against transformers' `generate()` in bfloat16, same model, same run; and a
correctness smoke (greedy token ids equal to `generate()`'s, for the models and through `bardterm generate`).

    python benchmarks/cuda_speed.py                 # on a CUDA machine; writes benchmarks/results/cuda_speed.txt
    python benchmarks/cuda_speed.py --device cpu --quick   # the same code on the CPU, small, prints only

Models: the shipped checkpoint, a distilgpt2-shaped GPT-2 and a Llama of SmolLM2-135M's shape (random weights).
Batch 1, greedy, exactly N new tokens each; the engines alternate and the median is reported, with the ratio
per repeat. Peak memory is torch.cuda.max_memory_allocated over one generation of each engine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_speed import PROMPT, REPO, FirstTokenClock, describe_machine, make_tokenizer, write_atomically  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "cuda_speed.txt"
SHAPES = {
    "distilgpt2-shaped": ("gpt2", {"n_layer": 6, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}),
    "SmolLM2-135M-shaped": ("llama", {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536,
                                      "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                                      "max_position_embeddings": 2048, "tie_word_embeddings": True}),
}
QUICK_SHAPES = {
    "distilgpt2-shaped": ("gpt2", {"n_layer": 1, "n_embd": 64, "n_head": 2, "vocab_size": 2048, "n_positions": 256}),
    "SmolLM2-135M-shaped": ("llama", {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                      "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 2048,
                                      "max_position_embeddings": 256, "tie_word_embeddings": True}),
}


def build(kind: str, shape: dict, folder: Path, device: str, dtype):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer(shape["vocab_size"], folder)
    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**shape, bos_token_id=0, eos_token_id=0))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape, bos_token_id=0, eos_token_id=0))
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_bardterm(model, tokenizer, tokens: int, device: str):
    from bardterm.engine import Generation
    from bardterm.registry import build as build_setup

    setup = build_setup("greedy", chain=[])  # the plain algorithm, as generate() runs it
    started = time.perf_counter()
    generation = Generation(model, tokenizer, PROMPT, setup, max_new_tokens=tokens, min_new_tokens=tokens, seed=0)
    ttft = None
    for _ in generation:
        if ttft is None:
            ttft = time.perf_counter() - started
    sync(device)
    return time.perf_counter() - started, ttft, generation.result.token_ids


def run_generate(model, tokenizer, tokens: int, device: str):
    started = time.perf_counter()
    clock = FirstTokenClock(started)
    ids = tokenizer(PROMPT, return_tensors="pt").to(device)
    out = model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id, streamer=clock)
    sync(device)
    return time.perf_counter() - started, clock.ttft, out[0, ids["input_ids"].shape[1]:].tolist()


ENGINES = {"bardterm": run_bardterm, "generate": run_generate}


def peak_mib(runner, model, tokenizer, tokens: int, device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    runner(model, tokenizer, tokens, device)
    return torch.cuda.max_memory_allocated() / 2**20


def compare(name, model, tokenizer, tokens, repeats, device, log) -> bool:
    params = sum(p.numel() for p in model.parameters())
    for runner in ENGINES.values():  # warm-up: kernels load, caches fill
        runner(model, tokenizer, 8, device)
    times = {engine: [] for engine in ENGINES}
    ids = {}
    for repeat in range(repeats):
        for engine in (ENGINES if repeat % 2 == 0 else list(ENGINES)[::-1]):
            total, ttft, got = ENGINES[engine](model, tokenizer, tokens, device)
            times[engine].append((total, ttft))
            ids.setdefault(engine, got)
    same = ids["bardterm"] == ids["generate"]
    ratios = sorted(g[0] / b[0] for b, g in zip(times["bardterm"], times["generate"]))
    cells = []
    for engine, runner in ENGINES.items():
        total = statistics.median(t for t, _ in times[engine])
        ttft = statistics.median(f for _, f in times[engine]) * 1000
        memory = peak_mib(runner, model, tokenizer, tokens, device)
        cells.append(f"{tokens / total:8.1f} {ttft:7.1f} {memory if memory is not None else float('nan'):8.0f}")
    log(f"{name:<20} {params / 1e6:6.1f}M  {cells[0]} | {cells[1]} | {statistics.median(ratios):5.2f}x "
        f"({ratios[0]:.2f}-{ratios[-1]:.2f})  same greedy ids: {'yes' if same else 'NO'}")
    return same


def cli_smoke(device: str, dtype: str, tokens: int, log) -> bool:
    """`bardterm generate` on the shipped checkpoint, greedy: its token ids against generate()'s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    command = [sys.executable, "-m", "bardterm", "generate", "ROMEO:", "--device", device, "--dtype", dtype,
               "--decoder", "greedy", "--chain", "", "--max-new-tokens", str(tokens), "--min-new-tokens",
               str(tokens), "--json"]
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])})
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        log(f"bardterm generate --device {device} --dtype {dtype}: FAILED ({out.stderr.strip()[-300:]})")
        return False
    ours = json.loads(out.stdout)["token_ids"]
    path = REPO / "checkpoints" / "shakespeare"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    ids = tokenizer("ROMEO:", return_tensors="pt").to(device)
    theirs = model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                            pad_token_id=tokenizer.eos_token_id)[0, ids["input_ids"].shape[1]:].tolist()
    same = ours == theirs
    log(f"bardterm generate --device {device} --dtype {dtype} (shipped checkpoint, {tokens} greedy tokens, "
        f"{seconds:.1f} s command to exit): same ids as generate(): {'yes' if same else 'NO'}")
    return same


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--quick", action="store_true", help="small models, 16 tokens, 1 repeat, prints only")
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    tokens = args.tokens or (16 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 3)
    output = args.output or (None if args.quick else RESULTS)
    dtype = getattr(torch, args.dtype)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    lines = [describe_machine(), f"GPU: {gpu}; {args.dtype}; batch 1, greedy, {tokens} new tokens; median of "
             f"{repeats} alternating runs; ratio = generate()'s time / bardterm's in the same repeat", "",
             f"{'model':<20} {'params':>7}  {'tok/s':>8} {'ttft ms':>7} {'peak MiB':>8} | {'tok/s':>8} {'ttft ms':>7} "
             f"{'peak MiB':>8} | ratio", f"{'':<29} {'bardterm':-^25} | {'generate()':-^25} |"]
    print("\n".join(lines), flush=True)

    def log(line):
        print(line, flush=True)
        lines.append(line)

    ok = True
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    shipped = REPO / "checkpoints" / "shakespeare"
    model = AutoModelForCausalLM.from_pretrained(shipped, dtype=dtype).to(args.device).eval()
    ok &= compare("shipped checkpoint", model, AutoTokenizer.from_pretrained(shipped), min(tokens, 200), repeats,
                  args.device, log)
    with tempfile.TemporaryDirectory() as root:
        for name, (kind, shape) in (QUICK_SHAPES if args.quick else SHAPES).items():
            model, tokenizer = build(kind, shape, Path(root) / name, args.device, dtype)
            ok &= compare(name, model, tokenizer, tokens, repeats, args.device, log)
            del model
    log("")
    ok &= cli_smoke(args.device, args.dtype, 32, log)
    ok &= cli_smoke(args.device, "float32", 32, log)
    if output:
        write_atomically(output, "\n".join(lines) + "\n")
        print(f"written to {output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
