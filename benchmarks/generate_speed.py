"""Generation speed: bardterm's engine side by side with transformers' `model.generate()`, same model, same run.

    python benchmarks/generate_speed.py            # 256 new tokens, 3 repeats; writes benchmarks/results/
    python benchmarks/generate_speed.py --quick    # smoke test: 16 tokens, 1 repeat, small models, prints only

Batch 1 on the CPU, random weights, for greedy, nucleus sampling (top-p 0.9) and beam search (4 beams), on
(a) a model shaped like distilgpt2 and (b) one of about 10M parameters. Both engines are made to produce
exactly N tokens (min_new_tokens = max_new_tokens), and their runs alternate so that load on the machine hits
both alike; the median is reported. Tokens/s counts from the call (prompt tokenization included) to the last
token; time to first token likewise. Peak memory is the resident set size (ru_maxrss) of a fresh process that
loads the model and runs one generation, with the part added by the generation in brackets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "generate_speed.txt"
CORPUS = REPO.parent / "shared" / "data" / "tiny_shakespeare" / "input.txt"
PROMPT = "ROMEO:\nBut, soft! what light through yonder window breaks?\n"

MODELS = {  # GPT-2 architecture, random weights
    "distilgpt2-shaped": {"n_layer": 6, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024},
    "10M": {"n_layer": 6, "n_embd": 384, "n_head": 6, "vocab_size": 2048, "n_positions": 512},
}
QUICK_MODELS = {
    "distilgpt2-shaped": {"n_layer": 1, "n_embd": 64, "n_head": 2, "vocab_size": 50257, "n_positions": 256},
    "10M": {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 2048, "n_positions": 256},
}
STRATEGIES = {  # ours: build() arguments; reference: generate() arguments. chain=[]: the plain algorithms,
    # without the repetition penalty greedy and beam bring by name, as generate() runs them
    "greedy": ({"decoder": "greedy", "chain": []}, {"do_sample": False}),
    "nucleus": ({"decoder": "sample", "top_p": 0.9}, {"do_sample": True, "top_p": 0.9, "top_k": 0}),
    "beam 4": ({"decoder": "beam", "num_beams": 4, "chain": []}, {"do_sample": False, "num_beams": 4}),
}
ENGINES = ("bardterm", "generate")


def make_tokenizer(vocab_size: int, folder: Path):
    """A byte-level BPE trained on tiny Shakespeare, topped up with plain added tokens to the full size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = CORPUS.read_text()[:300_000] if CORPUS.exists() else PROMPT * 1000
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer)
    missing = vocab_size - tokenizer.get_vocab_size()
    if missing > 0:  # the corpus has fewer merges than a GPT-2 vocabulary: pad with ordinary tokens
        tokenizer.add_tokens([f"<w{i}>" for i in range(missing)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                      bos_token="<|endoftext|>")
    wrapped.save_pretrained(folder)
    return wrapped


def make_model(shape: dict, folder: Path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(**shape, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    return model


def prepare(models: dict, root: Path) -> dict:
    """Build each model and tokenizer once, saved to `root` for the memory-measuring subprocesses."""
    built = {}
    for name, shape in models.items():
        folder = root / name.replace(" ", "_")
        tokenizer = make_tokenizer(shape["vocab_size"], folder)
        assert len(tokenizer) == shape["vocab_size"]
        model = make_model(shape, folder)
        params = sum(p.numel() for p in model.parameters())
        built[name] = (model, tokenizer, folder, params)
    return built


class FirstTokenClock:
    """A generate() streamer that notes when the first new token arrives (its first `put` is the prompt)."""

    def __init__(self, started: float):
        self.started, self.calls, self.ttft = started, 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.ttft = time.perf_counter() - self.started

    def end(self):
        pass


def run_bardterm(model, tokenizer, strategy: str, tokens: int) -> tuple[float, float | None, int]:
    from bardterm.engine import Generation
    from bardterm.registry import build

    settings = dict(STRATEGIES[strategy][0])
    setup = build(settings.pop("decoder"), **settings)
    started = time.perf_counter()
    generation = Generation(model, tokenizer, PROMPT, setup, max_new_tokens=tokens, min_new_tokens=tokens, seed=0)
    ttft = None
    for _ in generation:
        if ttft is None:
            ttft = time.perf_counter() - started
    total = time.perf_counter() - started
    return total, ttft, len(generation.result.token_ids)


def run_generate(model, tokenizer, strategy: str, tokens: int) -> tuple[float, float | None, int]:
    options = STRATEGIES[strategy][1]
    torch.manual_seed(0)
    started = time.perf_counter()
    clock = FirstTokenClock(started) if options.get("num_beams", 1) == 1 else None  # streamers refuse beams
    ids = tokenizer(PROMPT, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tokenizer.eos_token_id,
                         streamer=clock, **options)
    total = time.perf_counter() - started
    return total, clock.ttft if clock else None, out.shape[1] - ids["input_ids"].shape[1]


RUNNERS = {"bardterm": run_bardterm, "generate": run_generate}


def measure_memory(folder: Path, strategy: str, engine: str, tokens: int) -> tuple[float, float]:
    """Peak RSS (MiB) of a fresh process that loads the model and generates once, and the generation's share."""
    command = [sys.executable, __file__, "--memory-probe", str(folder), strategy, engine, str(tokens),
               "--threads", str(torch.get_num_threads())]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    return probe["peak_mib"], probe["peak_mib"] - probe["loaded_mib"]


def memory_probe(folder: str, strategy: str, engine: str, tokens: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    for parameter in model.parameters():  # weights may be memory-mapped: read them in before measuring
        parameter.detach().sum()
    loaded = resident_mib("VmRSS")
    reset_peak()  # so that the peak is the generation's, not loading's
    RUNNERS[engine](model, tokenizer, strategy, tokens)
    print(json.dumps({"loaded_mib": loaded, "peak_mib": resident_mib("VmHWM")}))


def resident_mib(field: str) -> float:
    """Current (VmRSS) or peak (VmHWM) resident memory of this process, from /proc (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: the peak since start


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        pass


def benchmark(models: dict, strategies: list[str], tokens: int, repeats: int, memory: bool, log=print) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as root:
        built = prepare(models, Path(root))
        for name, (model, tokenizer, folder, params) in built.items():
            log(f"# {name}: {params / 1e6:.1f}M parameters, vocabulary {len(tokenizer)}")
            floor = matmul_floor(model, tokens)
            log(f"# floor: the model's matrix products alone, one token at a time, take {floor * 1000:.2f} ms a token "
                f"({1 / floor:.0f} tokens/s); no exact engine can beat that")
            for strategy in strategies:
                for engine in ENGINES:  # warm-up: first calls pay one-off costs
                    RUNNERS[engine](model, tokenizer, strategy, 4)
                times = {engine: [] for engine in ENGINES}
                for repeat in range(repeats):
                    order = ENGINES if repeat % 2 == 0 else ENGINES[::-1]
                    for engine in order:
                        total, ttft, count = RUNNERS[engine](model, tokenizer, strategy, tokens)
                        assert count == tokens, f"{engine} produced {count} tokens, not {tokens}"
                        times[engine].append((total, ttft))
                row = {"model": name, "strategy": strategy}
                for engine in ENGINES:
                    row[engine] = {
                        "tokens_per_s": tokens / statistics.median(t for t, _ in times[engine]),
                        "ttft_ms": (statistics.median(f for _, f in times[engine]) * 1000
                                    if times[engine][0][1] is not None else None),
                        "runs_s": [round(t, 3) for t, _ in times[engine]],
                    }
                    if memory:
                        row[engine]["peak_mib"], row[engine]["generation_mib"] = measure_memory(
                            folder, strategy, engine, tokens)
                # Each repeat runs both engines back to back, so a ratio per repeat cancels slow drifts in the
                # machine's load; the median of those ratios is the figure, their range shows the noise.
                ratios = sorted(theirs[0] / ours[0] for ours, theirs in zip(times["bardterm"], times["generate"]))
                row["ratio"] = statistics.median(ratios)
                row["ratio_range"] = (ratios[0], ratios[-1])
                log(format_row(row))
                rows.append(row)
    return rows


def matmul_floor(model, tokens: int) -> float:
    """Seconds per token for a GPT-2 model's weight matrices alone (batch 1, the same addmm/linear calls as
    the model): at batch 1 each token streams every weight from memory once, which bounds any exact engine."""
    blocks = model.transformer.h
    convs = [conv for block in blocks for conv in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)]
    inputs = {conv.weight.shape[0]: torch.randn(1, conv.weight.shape[0]) for conv in convs}
    head = model.lm_head.weight

    def one_token():
        for conv in convs:
            torch.addmm(conv.bias, inputs[conv.weight.shape[0]], conv.weight)
        torch.nn.functional.linear(inputs[head.shape[1]], head)

    with torch.inference_mode():
        one_token()
        started = time.perf_counter()
        for _ in range(tokens):
            one_token()
        return (time.perf_counter() - started) / tokens


def format_row(row: dict) -> str:
    def engine(e):
        ttft = f"{e['ttft_ms']:7.1f}" if e["ttft_ms"] is not None else "      -"
        memory = f"{e['peak_mib']:6.0f} (+{e['generation_mib']:4.0f})" if "peak_mib" in e else " " * 13
        return f"{e['tokens_per_s']:8.1f} {ttft} {memory}"

    low, high = row["ratio_range"]
    return (f"{row['model']:<18} {row['strategy']:<8} {engine(row['bardterm'])} | {engine(row['generate'])} | "
            f"{row['ratio']:5.2f}x ({low:.2f}-{high:.2f})")


HEADER = (f"{'model':<18} {'strategy':<8} {'tok/s':>8} {'ttft ms':>7} {'peak MiB (gen)':>13} | "
          f"{'tok/s':>8} {'ttft ms':>7} {'peak MiB (gen)':>13} | ratio\n"
          f"{'':<27} {'bardterm':-^30} | {'generate()':-^30} | ours/theirs (range)")


def describe_machine() -> str:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
            f"machine: {cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
            f"load average {load} (shared machine)\n"
            f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny models, 16 tokens, 1 repeat")
    parser.add_argument("--tokens", type=int, help="new tokens per run (default 256, quick 16)")
    parser.add_argument("--repeats", type=int, help="runs per engine and configuration (default 3, quick 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--output", type=Path, help=f"where to write the results (default {RESULTS}, not in quick)")
    parser.add_argument("--threads", type=int, help="torch threads for both engines (default: torch's choice)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="only these models (default: all)")
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), help="only these strategies (default: all)")
    parser.add_argument("--memory-probe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        folder, strategy, engine, tokens = args.memory_probe
        memory_probe(folder, strategy, engine, int(tokens))
        return 0

    tokens = args.tokens or (16 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 3)
    output = args.output or (None if args.quick else RESULTS)
    lines = [describe_machine(), f"{tokens} new tokens, batch 1, CPU, median of {repeats} alternating runs; "
             "ratio = median over repeats of bardterm tok/s / generate() tok/s in the same repeat (targets: >= 1.0x on distilgpt2-shaped, >= 1.5x on 10M "
             "for greedy and nucleus); ttft = time to first token; peak = resident memory of a fresh process, "
             "(gen) = the part the generation added; generate() cannot stream beams, so no ttft there", "", HEADER]
    print("\n".join(lines), flush=True)

    def log(line):
        print(line, flush=True)
        lines.append(line)

    models = QUICK_MODELS if args.quick else MODELS
    models = {name: shape for name, shape in models.items() if not args.models or name in args.models}
    benchmark(models, args.strategies or list(STRATEGIES), tokens, repeats, memory=not args.no_memory, log=log)
    if output:
        write_atomically(output, "\n".join(lines) + "\n")
        print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
