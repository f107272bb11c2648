"""bardterm against llama.cpp on the CPU, the same models in the same run, at each precision.

    python benchmarks/llamacpp_speed.py            # installs llama-cpp-python if missing (a ~10-minute build),
                                                   # writes benchmarks/results/llamacpp_speed.txt
    python benchmarks/llamacpp_speed.py --quick    # smoke test: small models, 16 tokens, 1 repeat, prints only

Each model is converted to GGUF (f32, f16, q8_0) with `convert_hf_to_gguf.py` from llama-cpp-python's own
source distribution (the llama.cpp it was built with), telling the converter that our byte-level BPE
tokenizers pre-tokenize as GPT-2's does. llama.cpp runs through llama-cpp-python's `Llama.generate` on the
prompt's token ids (so both engines see the same prompt), greedy, with end-of-text ruled out so that both
produce exactly N tokens (bardterm: min_new_tokens = N). Pairs (nearest precisions): bardterm float32 vs f32,
bfloat16 and float16 vs f16, int8 vs q8_0. Each repeat runs every configuration once, in an order that
alternates, so that the machine's load hits all alike; the median is reported, and the ratio is the median
over repeats of bardterm tok/s / llama.cpp tok/s in the same repeat. Tokens/s counts from the call to the last
token, time to first token likewise. Peak memory: resident set (VmHWM) of a fresh process that loads the
model and generates once. "same ids": how many of the first greedy token ids agree with the paired llama.cpp
run (float32/f32 should agree throughout; other pairs round differently, so agreement can end at a near tie).
Cost: nats/char over float32 for each bardterm precision on the start of the validation split (the same
`evaluate_ids` that `bardterm eval` runs).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import runpy
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's bardterm
from generate_speed import CORPUS, REPO, describe_machine, make_tokenizer, resident_mib, write_atomically  # noqa: E402

LLAMA_CPP_VERSION = "0.3.36"
RESULTS = REPO / "benchmarks" / "results" / "llamacpp_speed.txt"
CACHE = Path(os.environ.get("BARDTERM_BENCH_CACHE", Path(tempfile.gettempdir()) / "bardterm-llamacpp-bench"))
PROMPT = "ROMEO:\nBut, soft! what light through yonder window breaks?\n"
SHIPPED = REPO / "checkpoints" / "shakespeare"
MODELS = {  # name: (architecture, config), random weights except the shipped checkpoint
    "shipped (5.9M)": ("shipped", None),
    "distilgpt2-shaped": ("gpt2", {"n_layer": 6, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}),
    "SmolLM2-135M-shaped": ("llama", {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536,
                                      "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                                      "max_position_embeddings": 2048, "tie_word_embeddings": True,
                                      "rms_norm_eps": 1e-5, "rope_theta": 100000.0}),
}
QUICK_MODELS = {
    "distilgpt2-shaped": ("gpt2", {"n_layer": 1, "n_embd": 64, "n_head": 2, "vocab_size": 1024, "n_positions": 256}),
    "SmolLM2-135M-shaped": ("llama", {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                      "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 1024,
                                      "max_position_embeddings": 256, "tie_word_embeddings": True}),
}
PAIRS = {"float32": "f32", "bfloat16": "f16", "float16": "f16", "int8": "q8_0"}  # bardterm: nearest llama.cpp


# --- what the benchmark needs, installed by itself ------------------------------------------------------------

def ensure_llama_cpp() -> None:
    """llama-cpp-python in this environment (pip builds it from source: about 10 minutes on 2 cores)."""
    if importlib.util.find_spec("llama_cpp") is None:
        print(f"installing llama-cpp-python=={LLAMA_CPP_VERSION} (builds llama.cpp from source)...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"llama-cpp-python=={LLAMA_CPP_VERSION}"],
                       check=True)


def converter() -> Path:
    """convert_hf_to_gguf.py from llama-cpp-python's source distribution, unpacked once into CACHE."""
    root = CACHE / f"llama_cpp_python-{LLAMA_CPP_VERSION}"
    script = root / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if not script.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", str(CACHE)], check=True)
        with tarfile.open(CACHE / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz") as archive:
            members = [m for m in archive.getmembers() if "/vendor/llama.cpp/" in m.name and
                       any(part in m.name for part in ("convert_hf_to_gguf.py", "/conversion/", "/gguf-py/"))]
            archive.extractall(CACHE, members=members, filter="data")
    return script


def convert_to_gguf(model_dir: Path, outtype: str) -> Path:
    """The model as GGUF of `outtype`, converted once and kept in CACHE (keyed by the model's config and weights)."""
    key = hashlib.sha1((model_dir / "config.json").read_bytes())
    key.update(str((model_dir / "model.safetensors").stat().st_size).encode())
    out = CACHE / "gguf" / f"{model_dir.name}-{key.hexdigest()[:10]}-{outtype}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, __file__, "--convert", str(converter()), str(model_dir), outtype, str(out)],
                       check=True, capture_output=True)
    return out


def run_converter(script: str, model_dir: str, outtype: str, out: str) -> None:
    """In a subprocess: the converter, told that our byte-level BPE pre-tokenizes as GPT-2's does (its
    check hashes a tokenizer's output against known ones, and ours, trained here, is in no list)."""
    sys.path.insert(0, str(Path(script).parent))
    sys.path.insert(1, str(Path(script).parent / "gguf-py"))
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    load_hparams = base.ModelBase.load_hparams

    def with_n_ctx(dir_model, *args, **kwargs):  # transformers 5 writes GPT-2's n_positions, not its alias n_ctx
        hparams = load_hparams(dir_model, *args, **kwargs)
        if "n_positions" in hparams:
            hparams.setdefault("n_ctx", hparams["n_positions"])
        return hparams

    base.ModelBase.load_hparams = staticmethod(with_n_ctx)

    def not_sentencepiece(self, *args, **kwargs):  # ours are byte-level BPE: the converter's Llama then tries GPT-2's
        raise FileNotFoundError("no sentencepiece model")

    base.TextModel._set_vocab_sentencepiece = base.TextModel._set_vocab_llama_hf = not_sentencepiece
    sys.argv = [script, model_dir, "--outtype", outtype, "--outfile", out]
    runpy.run_path(script, run_name="__main__")


# --- models ---------------------------------------------------------------------------------------------------

def prepare(models: dict, root: Path) -> dict:
    """Each model's folder (safetensors + tokenizer), built once with seeded random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    folders = {}
    for name, (kind, shape) in models.items():
        if kind == "shipped":
            folders[name] = SHIPPED
            continue
        folder = root / name.split(" ")[0]
        if not (folder / "model.safetensors").is_file():
            make_tokenizer(shape["vocab_size"], folder)
            torch.manual_seed(0)
            config = (GPT2Config(**shape, bos_token_id=0, eos_token_id=0) if kind == "gpt2"
                      else LlamaConfig(**shape, bos_token_id=0, eos_token_id=0))
            (GPT2LMHeadModel if kind == "gpt2" else LlamaForCausalLM)(config).save_pretrained(folder)
        folders[name] = folder
    return folders


def native_step_line() -> str:
    """Which decode step bardterm's batch-1 runs take: the native one (built now if this machine has none yet,
    so that no timed run waits for it), or the lean PyTorch one, and why."""
    from bardterm import native_step

    if not native_step.enabled():
        return f"bardterm decode step: lean PyTorch step ({native_step.ENVIRONMENT}=0)"
    built = native_step.library(wait=True)
    if built is None:
        return f"bardterm decode step: lean PyTorch step (native step not built: {native_step.build_error()})"
    return f"bardterm decode step: native ({built.bardterm_vector_isa().decode()} build of bardterm/native/cpu_step.cpp)"


# --- the two engines ------------------------------------------------------------------------------------------

class Bardterm:
    def __init__(self, folder: Path, precision: str):
        from bardterm.models import load_checkpoint

        self.loaded = load_checkpoint(folder, device="cpu", dtype=precision)
        self.tokenizer = self.loaded.tokenizer

    def prompt_ids(self) -> list[int]:
        return self.tokenizer(PROMPT)["input_ids"]

    def run(self, tokens: int) -> tuple[float, float, list[int]]:
        from bardterm.engine import Generation
        from bardterm.registry import build

        started = time.perf_counter()
        generation = Generation(self.loaded.model, self.tokenizer, PROMPT, build("greedy", chain=[]),
                                max_new_tokens=tokens, min_new_tokens=tokens, seed=0)
        ttft = None
        for _ in generation:
            if ttft is None:
                ttft = time.perf_counter() - started
        return time.perf_counter() - started, ttft, generation.result.token_ids


class LlamaCpp:
    def __init__(self, gguf: Path, threads: int, prompt_ids: list[int], eos: int, context: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=min(512, context), n_batch=512, n_threads=threads, n_threads_batch=threads,
                         verbose=False)
        self.prompt, self.eos = prompt_ids, eos

    def run(self, tokens: int) -> tuple[float, float, list[int]]:
        def no_eos(_, scores):  # as min_new_tokens does for bardterm: exactly `tokens` tokens
            scores[self.eos] = -float("inf")
            return scores

        started = time.perf_counter()
        self.llm.reset()  # no prompt reuse between runs: each run evaluates its prompt, as bardterm does
        ids, ttft = [], None
        for token in self.llm.generate(self.prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                                       logits_processor=[no_eos], reset=True):
            ids.append(token)
            if ttft is None:
                ttft = time.perf_counter() - started
            if len(ids) == tokens:
                break
        return time.perf_counter() - started, ttft, ids


def engine_for(kind: str, target: str, threads: int, folder: Path, prompt_ids: list[int], eos: int):
    if kind == "bardterm":
        return Bardterm(folder, target)
    config = json.loads((folder / "config.json").read_text())
    context = config.get("n_positions") or config.get("max_position_embeddings") or 512
    return LlamaCpp(convert_to_gguf(folder, target), threads, prompt_ids, eos, context)


def memory_probe(kind: str, target: str, threads: int, folder: str, tokens: int, prompt: list[int], eos: int) -> None:
    """In a fresh process: load, generate once, print the peak resident memory."""
    torch.set_num_threads(threads)
    engine = engine_for(kind, target, threads, Path(folder), prompt, eos)
    engine.run(tokens)
    print(json.dumps({"peak_mib": resident_mib("VmHWM")}))


def peak_memory(kind: str, target: str, threads: int, folder: Path, tokens: int, prompt: list[int], eos: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-probe", kind, target, str(threads), str(folder),
                          str(tokens), json.dumps(prompt), str(eos)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


# --- quality --------------------------------------------------------------------------------------------------

def cost_per_precision(folder: Path, chars: int) -> dict[str, float]:
    """nats/char on the first `chars` characters of the validation split, per bardterm precision."""
    from bardterm.data import load_dataset
    from bardterm.models import load_checkpoint
    from bardterm.training.evaluate import evaluate_ids
    from bardterm.training.tokenizer import bos_id, encode

    text = load_dataset("tiny_shakespeare", data_file=str(CORPUS) if CORPUS.exists() else None).split("validation")
    text = text[:chars]
    costs = {}
    for precision in PAIRS:
        loaded = load_checkpoint(folder, device="cpu", dtype=precision)
        ids = encode(loaded.tokenizer, text)
        block = min(256, getattr(loaded.model.config, "n_positions", None) or loaded.model.config.max_position_embeddings)
        metrics = evaluate_ids(loaded.model, ids, len(text), block, bos=bos_id(loaded.tokenizer), batch_size=4)
        costs[precision] = metrics["nats_per_char"]
    return costs


# --- the run --------------------------------------------------------------------------------------------------

def benchmark(folders: dict, threads_list: list[int], tokens: int, repeats: int, memory: bool, cost_chars: int,
              log) -> None:
    for name, folder in folders.items():
        reference = Bardterm(folder, "float32")
        prompt, eos = reference.prompt_ids(), reference.tokenizer.eos_token_id
        context = getattr(reference.loaded.model.config, "n_positions", None) or 2048
        del reference
        n = min(tokens, context - len(prompt))
        costs = cost_per_precision(folder, cost_chars) if cost_chars else {}
        params = sum(p.numel() for p in Bardterm(folder, "float32").loaded.model.parameters())
        log(f"\n# {name}: {params / 1e6:.1f}M parameters, prompt {len(prompt)} tokens, {n} new tokens")
        for threads in threads_list:
            torch.set_num_threads(threads)
            configs = [("bardterm", p) for p in PAIRS] + [("llama.cpp", t) for t in dict.fromkeys(PAIRS.values())]
            engines = {config: engine_for(*config, threads, folder, prompt, eos) for config in configs}
            for engine in engines.values():
                engine.run(4)  # warm-up: first calls pay one-off costs
            times = {config: [] for config in configs}
            ids = {}
            for repeat in range(repeats):
                for config in (configs if repeat % 2 == 0 else configs[::-1]):
                    total, ttft, got = engines[config].run(n)
                    assert len(got) == n, f"{config} produced {len(got)} tokens, not {n}"
                    times[config].append((total, ttft))
                    ids.setdefault(config, got)
            del engines
            for precision, theirs in PAIRS.items():
                ours_config, theirs_config = ("bardterm", precision), ("llama.cpp", theirs)
                ratios = sorted(t[0] / o[0] for o, t in zip(times[ours_config], times[theirs_config]))
                agree = next((i for i, (a, b) in enumerate(zip(ids[ours_config], ids[theirs_config])) if a != b), n)
                cells = []
                for config in (ours_config, theirs_config):
                    total = statistics.median(t for t, _ in times[config])
                    ttft = statistics.median(f for _, f in times[config]) * 1000
                    peak = peak_memory(*config, threads, folder, n, prompt, eos) if memory else float("nan")
                    cells.append(f"{n / total:8.1f} {ttft:7.1f} {peak:7.0f}")
                cost = (f"{costs[precision] - costs['float32']:+.4f}" if costs else "-")
                log(f"{threads:>2} {precision:<9} {cells[0]} | {theirs:<5} {cells[1]} | "
                    f"{statistics.median(ratios):5.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) {agree:>4}/{n:<4} {cost:>8}")
        if costs:
            log(f"   nats/char (float32): {costs['float32']:.4f} on the first {cost_chars} characters of validation")


HEADER = (f"{'th':>2} {'bardterm':<9} {'tok/s':>8} {'ttft ms':>7} {'peak MB':>7} | {'llama':<5} {'tok/s':>8} "
          f"{'ttft ms':>7} {'peak MB':>7} | {'ratio (range)':<17} {'same ids':>9} {'cost':>8}")


def cpu_flags_line() -> str:
    from bardterm.precision import cpu_flags, native_bf16, native_fp16

    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16",
              "amx_int8", "amx_fp16"]
    have = [flag for flag in wanted if flag in cpu_flags()]
    return (f"CPU flags: {' '.join(have)} (of: {' '.join(wanted)}); native bf16: {native_bf16()}, native fp16: "
            f"{native_fp16()}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: small models, 16 tokens, 1 repeat")
    parser.add_argument("--tokens", type=int, help="new tokens per run (default 128, quick 16)")
    parser.add_argument("--repeats", type=int, help="runs per configuration (default 3, quick 1)")
    parser.add_argument("--threads", type=int, nargs="+", help="thread counts (default 1 2)")
    parser.add_argument("--models", nargs="+", help="only these models (default: all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--cost-chars", type=int, help="characters of validation for the nats/char cost "
                        "(default 4000, quick 2000; 0: skip)")
    parser.add_argument("--output", type=Path, help=f"where to write the results (default {RESULTS}, not in quick)")
    parser.add_argument("--convert", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.convert:
        run_converter(*args.convert)
        return 0
    if args.memory_probe:
        kind, target, threads, folder, tokens, prompt, eos = args.memory_probe
        memory_probe(kind, target, int(threads), folder, int(tokens), json.loads(prompt), int(eos))
        return 0

    ensure_llama_cpp()
    import llama_cpp

    tokens = args.tokens or (16 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 3)
    output = args.output or (None if args.quick else RESULTS)
    cost_chars = args.cost_chars if args.cost_chars is not None else (2000 if args.quick else 4000)
    models = QUICK_MODELS if args.quick else MODELS
    models = {k: v for k, v in models.items() if not args.models or any(k.startswith(m) for m in args.models)}
    lines = [describe_machine(), cpu_flags_line(), f"llama-cpp-python {llama_cpp.__version__}", native_step_line(),
             f"batch 1, greedy, median of {repeats} interleaved runs; ratio = bardterm tok/s / llama.cpp tok/s in the "
             "same repeat (target >= 1.00x); same ids = leading greedy ids that agree with the paired llama.cpp run; "
             "cost = nats/char over bardterm float32", "", HEADER]
    print("\n".join(lines), flush=True)

    def log(line):
        print(line, flush=True)
        lines.append(line)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=CACHE if CACHE.exists() else None) as root:
        folders = prepare(models, Path(root))
        benchmark(folders, args.threads or [1, 2], tokens, repeats, not args.no_memory, cost_chars, log)
    log(f"\n(load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"{time.perf_counter() - started:.0f} s in all)")
    if output:
        write_atomically(output, "\n".join(lines) + "\n")
        print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
