"""`bardterm train` and `bardterm eval`. Heavy imports happen inside the commands, not here."""

from __future__ import annotations

import argparse

from bardterm.training.recipes import CHOICES, LION_LR_FACTOR, LION_WD_FACTOR, PRESETS

TRAIN_EPILOG = f"""\
Configuration is layered: built-in defaults, then --recipe FILE (TOML, keys are the long flag names with _),
then the flags you give. Presets for --base scratch: {', '.join(f'{k} ({v["n_layer"]}x{v["n_embd"]}, block {v["block_size"]}, vocab {v["vocab_size"]})' for k, v in PRESETS.items())}.
Lion defaults to a learning rate {1 / LION_LR_FACTOR:g}x smaller and weight decay {LION_WD_FACTOR:g}x larger than AdamW's.
Ctrl+C stops after the current step and saves a resumable state; continue with --output DIR --resume.
Multi-GPU: `accelerate launch -m bardterm train ...`.
"""

EVAL_EPILOG = """\
Method: the split is tokenized as one text with <|endoftext|> in front and cut into non-overlapping windows of
--block-size predicted tokens, so every token is scored exactly once (each sees half a block of context on
average, like nanoGPT's validation loss). --stride S < block size switches to a sliding window in which every
scored token sees at least block-S tokens of context. nats/char = total nats / characters of the split;
bits/char = nats/char / ln 2. `valtest` is validation followed by test (nanoGPT's "val"); `all` prints
validation, test and valtest.
"""


def add_parsers(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train or fine-tune a model (tiny_shakespeare by default)",
        description="Train a causal LM from scratch or fine-tune one, with evaluation, checkpoints and resume.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(train)
    train.set_defaults(func=run_train)

    ev = subparsers.add_parser(
        "eval", help="evaluate a checkpoint: loss/token, perplexity, nats/char, bits/char",
        description="Evaluate a checkpoint on a dataset split.", epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--checkpoint", required=True, help="checkpoint directory (Hugging Face format) or Hub id")
    ev.add_argument("--dataset", default="tiny_shakespeare", help="tiny_shakespeare, a text file or folder, hf:OWNER/NAME")
    ev.add_argument("--data-file", help="local copy of tiny_shakespeare (or set $BARDTERM_TINY_SHAKESPEARE)")
    ev.add_argument("--split", default="validation", choices=["validation", "test", "valtest", "train", "all"])
    ev.add_argument("--block-size", type=int, help="window length in tokens (default: the block size it was trained with)")
    ev.add_argument("--stride", type=int, help="sliding-window stride in tokens (default: non-overlapping windows)")
    ev.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    ev.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    ev.add_argument("--worst", type=int, default=0, metavar="N",
                    help="also list the N tokens that cost the most nats in all on each split (where the loss is)")
    ev.add_argument("--json", action="store_true", help="print the figures as JSON")
    ev.set_defaults(func=run_eval)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument("--recipe", help="TOML recipe file (see train/); flags override it")
    g.add_argument("--dataset", help="tiny_shakespeare (default), a text file or folder, or hf:OWNER/NAME")
    g.add_argument("--data-file", help="local copy of tiny_shakespeare (or set $BARDTERM_TINY_SHAKESPEARE)")
    g.add_argument("--base", help="Hub model id or local directory to fine-tune (default distilgpt2), or 'scratch'")
    g.add_argument("--preset", choices=CHOICES["preset"], help="model size for --base scratch (default small)")
    g.add_argument("--n-layer", type=int, help="scratch: number of layers (overrides the preset)")
    g.add_argument("--n-head", type=int, help="scratch: attention heads")
    g.add_argument("--n-embd", type=int, help="scratch: width")
    g.add_argument("--vocab-size", type=int, help="scratch: byte-level BPE vocabulary size, trained on the train split")
    g.add_argument("--block-size", type=int, help="context length in tokens")
    g.add_argument("--tie-weights", dest="tie_weights", action="store_true", default=None,
                   help="scratch: tie input and output embeddings (default)")
    g.add_argument("--no-tie-weights", dest="tie_weights", action="store_false")
    g.add_argument("--dropout", type=float, help="dropout (default 0.1)")
    g.add_argument("--attn-dropout", type=float, metavar="P", help="dropout on attention probabilities (default: "
                   "--dropout); 0 lets attention run as one fused kernel")
    g.add_argument("--activation", choices=CHOICES["activation"], help="scratch: MLP activation (default gelu_new, "
                   "GPT-2's; gelu_pytorch_tanh is the same function as one fused kernel)")
    g.add_argument("--rename-speakers", type=float, metavar="P", help="give each speaker of the training text an "
                   "invented name with probability P, afresh each epoch, so unseen names are learnt as names, "
                   "e.g. 0.5 (default 0: off)")
    g.add_argument("--rename-epochs", type=int, metavar="N", help="rename speakers only in the first N epochs, "
                   "then train on the real names, so the names of the seen plays are learnt again (default 0: "
                   "every epoch)")
    g.add_argument("--bpe-dropout", type=float, metavar="P", help="BPE-dropout: skip each merge with probability P "
                   "when tokenizing the training text, afresh each epoch, e.g. 0.1 (default 0: off)")

    o = p.add_argument_group("optimization")
    o.add_argument("--optimizer", choices=CHOICES["optimizer"],
                   help="adamw (default), lion, or muon (Muon for hidden matrices, AdamW for the rest)")
    o.add_argument("--lr", type=float, help="peak learning rate (adamw, muon: 1e-3 scratch, 5e-5 fine-tune; lion: /5)")
    o.add_argument("--min-lr-ratio", type=float, help="cosine floor as a fraction of --lr (default 0.1)")
    o.add_argument("--weight-decay", type=float, help="weight decay (adamw, muon 0.1; lion 0.5)")
    o.add_argument("--beta1", type=float, help="default 0.9")
    o.add_argument("--beta2", type=float, help="default 0.99")
    o.add_argument("--warmup-steps", type=int, help="linear warmup steps before cosine decay (default 100)")
    o.add_argument("--grad-clip", type=float, help="clip the gradient norm to this (0 = off; default 1.0)")
    o.add_argument("--ema", type=float, metavar="DECAY", help="evaluate and save an exponential moving average of "
                   "the weights with this decay per step, e.g. 0.998 (~500 steps; default 0: off)")
    o.add_argument("--batch-size", type=int, help="sequences per micro-batch per device (default 16)")
    o.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    o.add_argument("--mixed-precision", choices=CHOICES["mixed_precision"],
                   help="auto (default: bf16/fp16 on GPU, off on CPU), no, fp16, bf16")
    o.add_argument("--seed", type=int, help="seed for init, data order and dropout (default 1337)")
    o.add_argument("--threads", type=int, help="CPU threads for torch (default: one per core; 1 is often faster "
                   "on a CPU busy with other jobs)")

    r = p.add_argument_group("length, evaluation and output")
    r.add_argument("--epochs", type=float, help="passes over the training split (default 1 if no --max-steps)")
    r.add_argument("--max-steps", type=int, help="optimizer steps (caps --epochs)")
    r.add_argument("--eval-interval", type=int, help="evaluate every N steps (default 200)")
    r.add_argument("--eval-batch-size", type=int, help="windows per evaluation forward pass (default 32)")
    r.add_argument("--patience", type=int, help="stop after N evaluations without improvement (0 = never; default 5)")
    r.add_argument("--min-delta", type=float, help="improvement in val loss that counts (default 0)")
    r.add_argument("--log-interval", type=int, help="log line every N steps when not on a terminal (default 50)")
    r.add_argument("--run-name", help="name of the run; output goes to checkpoints/<run-name>")
    r.add_argument("--output", help="run directory (default checkpoints/<run-name>)")
    r.add_argument("--resume", action="store_true", help="continue the run in --output exactly where it stopped")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    r.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")


def config_from_args(args) -> dict:
    from bardterm.training.recipes import DEFAULTS, load_recipe, resolve

    flags = {k: getattr(args, k, None) for k in DEFAULTS}
    recipe = load_recipe(args.recipe) if getattr(args, "recipe", None) else {}
    config = resolve(flags, recipe)
    config["_explicit"] = {k: True for k, v in flags.items() if v is not None}
    return config


def run_train(args) -> int:
    from bardterm.training.loop import train

    config = config_from_args(args)
    return train(config, resume=args.resume, overwrite=args.overwrite,
                 show_progress=False if args.no_progress else None)


def run_eval(args) -> int:
    from bardterm.training.evaluate import run_eval as _run

    return _run(args)
