"""`bardterm train` and `bardterm eval`. Heavy imports happen inside the commands, not here."""

from __future__ import annotations

import argparse

from bardterm.training.settings import LION_LR_FACTOR, LION_WD_FACTOR, PRESETS
from bardterm.training.settings import add_arguments as add_setting_arguments

TRAIN_EPILOG = f"""\
Configuration is layered: built-in defaults, then --recipe FILE (TOML, keys are the long flag names with _),
then the flags you give. Presets for --base scratch: {', '.join(f'{k} ({v["n_layer"]}x{v["n_embd"]}, block {v["block_size"]}, vocab {v["vocab_size"]})' for k, v in PRESETS.items())}.
Lion defaults to a learning rate {1 / LION_LR_FACTOR:g}x smaller and weight decay {LION_WD_FACTOR:g}x larger than AdamW's.
Ctrl+C stops after the current step and saves a resumable state; continue with --output DIR --resume.
Several processes (GPUs, CPU cores or machines): `torchrun --nproc_per_node N -m bardterm train ...` or
`accelerate launch --num_processes N -m bardterm train ...`; see the README.
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
    ev.add_argument("--dtype", default="float32", help="precision to evaluate in: float32 (default), bfloat16, "
                    "float16, int8 or auto, to measure what a precision costs in nats/char")
    ev.add_argument("--worst", type=int, default=0, metavar="N",
                    help="also list the N tokens that cost the most nats in all on each split (where the loss is)")
    ev.add_argument("--json", action="store_true", help="print the figures as JSON")
    ev.set_defaults(func=run_eval)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="TOML recipe file (see train/); flags override it")
    add_setting_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --output exactly where it stopped "
                   "(with the same number of processes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")


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
