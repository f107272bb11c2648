"""A compiled decode step against the eager lean step, same model, same run (issue 26: "a compiled or captured
step over a static cache").

    python benchmarks/compiled_step_speed.py            # shipped checkpoint and distilgpt2-shaped, 1 thread
    python benchmarks/compiled_step_speed.py --quick    # a tiny GPT-2, prints only

Three GPT-2 decode steps, fp32, batch 1, one token at a time, run in alternation within each repeat:
  lean      bardterm's eager lean step (fast_gpt2.py) over the engine's cache, as `bardterm` runs it;
  static    the same operations over a static cache (keys and values written at a position given as a tensor,
            attention over the whole buffer under a mask), eager: the form a compiler needs, shapes never change;
  compiled  `static` through torch.compile (Inductor, fullgraph, static shapes), and with --cpp-wrapper also
            Inductor's C++ wrapper with frozen weights.
The compile time is reported beside: bardterm could only use a compiled step if it beat the eager one, and then
only compiled in the background or cached on disk. Logits of the compiled step are checked against eager.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's bardterm
from generate_speed import REPO, describe_machine, write_atomically  # noqa: E402
from llamacpp_speed import cpu_flags_line  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "compiled_step_speed.txt"
SHAPES = {"shipped (5.9M)": None,
          "distilgpt2-shaped": {"n_layer": 6, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}}
QUICK = {"tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 512, "n_positions": 128}}


def load(config: dict | None):
    """bardterm's own GPT-2 (gpt2.py), fp32: the shipped checkpoint, or random weights saved and loaded back."""
    from bardterm.models import SHIPPED_CHECKPOINT, load_checkpoint

    if config is None:
        return load_checkpoint(SHIPPED_CHECKPOINT, device="cpu", dtype="float32").model
    from transformers import GPT2Config, GPT2LMHeadModel

    from generate_speed import make_tokenizer

    folder = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**config)).save_pretrained(folder)
    make_tokenizer(config["vocab_size"], folder)
    return load_checkpoint(folder, device="cpu", dtype="float32").model


def static_step(model, capacity: int):
    """(step(ids, position, keys, values) -> logits, keys, values): the lean step's operations over a static cache."""
    config = model.config
    width, heads = config.n_embd, config.n_head
    head_dim = width // heads
    blocks = [(b.ln_1.weight, b.ln_1.bias, b.attn.c_attn.weight, b.attn.c_attn.bias, b.attn.c_proj.weight,
               b.attn.c_proj.bias, b.ln_2.weight, b.ln_2.bias, b.mlp.c_fc.weight, b.mlp.c_fc.bias,
               b.mlp.c_proj.weight, b.mlp.c_proj.bias) for b in model.transformer.h]
    wte, wpe, ln_f = model.transformer.wte.weight, model.transformer.wpe.weight, model.transformer.ln_f
    slots = torch.arange(capacity)
    keys = torch.zeros(len(blocks), 1, heads, capacity, head_dim)
    values = torch.zeros_like(keys)

    def step(ids, position, keys, values):
        x = F.embedding(ids, wte) + F.embedding(position.view(1, 1), wpe)
        mask = (slots <= position).view(1, 1, 1, capacity)
        for i, (g1, b1, wa, ba, wp, bp, g2, b2, wf, bf, wm, bm) in enumerate(blocks):
            q, k, v = torch.addmm(ba, F.layer_norm(x, (width,), g1, b1, 1e-5).view(1, width), wa).view(
                1, 3, heads, 1, head_dim).unbind(1)
            keys[i].index_copy_(2, position.view(1), k)
            values[i].index_copy_(2, position.view(1), v)
            attended = F.scaled_dot_product_attention(q, keys[i], values[i], attn_mask=mask, scale=head_dim ** -0.5)
            x = torch.addmm(bp, attended.reshape(1, width), wp).view(1, 1, width) + x
            f = torch.addmm(bf, F.layer_norm(x, (width,), g2, b2, 1e-5).view(1, width), wf)
            f = 0.5 * f * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (f + 0.044715 * torch.pow(f, 3.0))))
            x = x + torch.addmm(bm, f, wm).view(1, 1, width)
        return F.linear(F.layer_norm(x, (width,), ln_f.weight, ln_f.bias, 1e-5).view(1, width), wte)

    return step, keys, values


def rate_static(step, keys, values, tokens: int) -> float:
    with torch.inference_mode():
        started = time.perf_counter()
        for position in range(tokens):
            step(torch.tensor([[5]]), torch.tensor(position), keys, values)
        return tokens / (time.perf_counter() - started)


def rate_lean(model, tokens: int) -> float:
    from bardterm.decode_step import fast_decode_step

    step = fast_decode_step(model)
    with torch.inference_mode():
        cache = model.new_cache(tokens + 1)
        model(input_ids=torch.tensor([[5]]), past_key_values=cache)
        started = time.perf_counter()
        for _ in range(tokens):
            step(torch.tensor([[5]]), cache)
        return tokens / (time.perf_counter() - started)


def compile_step(step, keys, values, cpp_wrapper: bool):
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    inductor.cpp_wrapper = inductor.freezing = cpp_wrapper
    started = time.perf_counter()
    compiled = torch.compile(step, dynamic=False, fullgraph=True)
    with torch.inference_mode():
        compiled(torch.tensor([[5]]), torch.tensor(0), keys, values)
    return compiled, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpp-wrapper", action="store_true", help="also Inductor's C++ wrapper with frozen weights")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=str(RESULTS), help="results file, or - to print only")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.repeats, args.output = 16, 1, "-"
    torch.set_num_threads(args.threads)
    lines = [describe_machine(), cpu_flags_line(),
             f"batch 1, fp32, {args.tokens} tokens a run, median of {args.repeats} interleaved repeats; "
             "ratio = step tok/s / lean tok/s in the same repeat", ""]
    print("\n".join(lines), flush=True)
    for name, config in (QUICK if args.quick else SHAPES).items():
        model = load(config)
        step, keys, values = static_step(model, args.tokens + 1)
        steps = {"lean": lambda: rate_lean(model, args.tokens),
                 "static": lambda: rate_static(step, keys, values, args.tokens)}
        notes = []
        for variant, cpp in (("compiled", False), ("compiled C++", True))[:2 if args.cpp_wrapper else 1]:
            compiled, seconds = compile_step(step, keys, values, cpp)
            with torch.inference_mode():
                eager = step(torch.tensor([[7]]), torch.tensor(1), keys.clone(), values.clone())
                fast = compiled(torch.tensor([[7]]), torch.tensor(1), keys.clone(), values.clone())
            notes.append(f"{variant}: compiled in {seconds:.1f} s, logits within "
                         f"{(eager - fast).abs().max().item():.1e} of eager")
            steps[variant] = lambda compiled=compiled: rate_static(compiled, keys, values, args.tokens)
        runs = {variant: [] for variant in steps}
        for _ in range(args.repeats):
            for variant, run in steps.items():
                runs[variant].append(run())
        block = [f"# {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; " + "; ".join(notes)]
        for variant, rates in runs.items():
            ratio = statistics.median(r / lean for r, lean in zip(rates, runs["lean"]))
            block.append(f"  {variant:13s} {statistics.median(rates):8.1f} tok/s  ratio {ratio:.2f}x  "
                         f"[{', '.join(f'{r:.0f}' for r in rates)}]")
        print("\n".join(block), flush=True)
        lines += block
    if args.output != "-":
        write_atomically(Path(args.output), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
