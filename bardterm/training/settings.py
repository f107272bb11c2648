"""Every `bardterm train` setting, declared once: type, default, allowed range and help.

The command-line flags (`--lr`), the recipe keys (`lr = 1e-3`), type conversion and range checks all come from
these declarations, in the same way as decoder parameters (`bardterm.params.Param`, which `Setting` extends).
Checks that span several settings (n_embd divisible by n_head, defaults that depend on the optimizer) live in
`recipes.finalize`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bardterm.errors import BardtermError
from bardterm.params import InvalidParameter, Param

# Scratch-model shapes (GPT-2 architecture). Weight tying is GPT-2's default and kept.
PRESETS: dict[str, dict] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "vocab_size": 512},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 128, "vocab_size": 1024},
    "medium": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab_size": 2048},
}

# Lion: the Lion paper recommends a learning rate 3-10x smaller and weight decay 3-10x larger than AdamW's.
LION_LR_FACTOR = 1 / 5
LION_WD_FACTOR = 5

GROUPS = ("data and model", "LoRA", "optimization", "length, evaluation and output")


@dataclass(frozen=True)
class Setting(Param):
    """A training setting. `default=None` means "derived" (said in `default_text`); `resumable` settings may
    differ when a run is resumed (they do not change what is computed), any other difference is refused."""

    group: str = GROUPS[0]
    default_text: str = ""  # how the default reads in --help when it is not a plain value
    metavar: str | None = None
    resumable: bool = False

    def validate(self, value, owner: str = ""):
        if value is None and self.default is None:
            return None
        try:
            return super().validate(value)
        except InvalidParameter:
            raise BardtermError(f"invalid {self.flag} {value}: must be {self.allowed()}"
                                + (f" ({self.hint})" if self.hint else "")) from None

    def help_text(self) -> str:
        default = self.default_text or ("on" if self.default is True else "off" if self.default is False
                                        else f"{self.default:g}" if isinstance(self.default, float) else self.default)
        return f"{self.help} (default {default})"


def _s(name, type_, default, help, **kw) -> Setting:
    return Setting(name=name, type=type_, default=default, help=help, **kw)


MODEL, LORA, OPTIM, RUN = GROUPS
SETTINGS: tuple[Setting, ...] = (
    _s("dataset", str, "tiny_shakespeare", "tiny_shakespeare, a text file or a folder of *.txt files, or "
       "hf:OWNER/NAME"),
    _s("data_file", str, None, "local copy of tiny_shakespeare", default_text="$BARDTERM_TINY_SHAKESPEARE or "
       "downloaded once", resumable=True),
    _s("base", str, "distilgpt2", "Hub model id or local directory to fine-tune, or 'scratch'"),
    _s("preset", str, "small", "model size for --base scratch", choices=tuple(PRESETS)),
    _s("n_layer", int, None, "scratch: number of layers", min=1, default_text="the preset's"),
    _s("n_head", int, None, "scratch: attention heads", min=1, default_text="the preset's"),
    _s("n_embd", int, None, "scratch: width", min=1, default_text="the preset's"),
    _s("vocab_size", int, None, "scratch: byte-level BPE vocabulary size, trained on the train split", min=260,
       default_text="the preset's", hint="a byte-level BPE needs 256 bytes + specials"),
    _s("block_size", int, None, "context length in tokens", min=1,
       default_text="scratch: the preset's; fine-tune: the model's context, at most 256"),
    _s("tie_weights", bool, True, "scratch: tie input and output embeddings"),
    _s("dropout", float, 0.1, "dropout", min=0, max=1, max_inclusive=False),
    _s("attn_dropout", float, None, "dropout on attention probabilities; 0 lets attention run as one fused kernel",
       min=0, max=1, max_inclusive=False, metavar="P", default_text="--dropout", hint="0 is fastest on a CPU"),
    _s("activation", str, "gelu_new", "scratch: MLP activation (gelu_new is GPT-2's; gelu_pytorch_tanh is the "
       "same function as one fused kernel)", choices=("gelu_new", "gelu_pytorch_tanh")),
    _s("rename_speakers", float, 0.0, "give each speaker of the training text an invented name with "
       "probability P, afresh each epoch, so unseen names are learnt as names, e.g. 0.5 (0: off)",
       min=0, max=1, metavar="P"),
    _s("rename_epochs", int, 0, "rename speakers only in the first N epochs, then train on the real names "
       "(0: every epoch)", min=0, metavar="N"),
    _s("bpe_dropout", float, 0.0, "BPE-dropout: skip each merge with probability P when tokenizing the training "
       "text, afresh each epoch, e.g. 0.1 (0: off)", min=0, max=1, max_inclusive=False, metavar="P",
       hint="0 is off, 0.1 is the paper's value"),

    _s("lora", int, 0, "train a LoRA adapter of rank R on --base instead of every weight (0: full fine-tuning)",
       min=0, metavar="R", group=LORA),
    _s("lora_alpha", float, None, "LoRA scale numerator (the update is scaled by alpha / R)", min=0,
       min_inclusive=False, default_text="2 x R", group=LORA),
    _s("lora_dropout", float, 0.05, "dropout on the LoRA branch's input", min=0, max=1, max_inclusive=False,
       group=LORA),
    _s("lora_targets", str, "all-linear", "modules that get an adapter: all-linear, or comma-separated module "
       "names such as c_attn,c_proj", group=LORA),
    _s("merge", bool, False, "also write the adapter merged into its base as a full model in merged/",
       group=LORA, resumable=True),

    _s("optimizer", str, "adamw", "adamw, lion, or muon (Muon for hidden matrices, AdamW for the rest)",
       choices=("adamw", "lion", "muon"), group=OPTIM),
    _s("lr", float, None, "peak learning rate", min=0, max=10, min_inclusive=False, max_inclusive=False,
       default_text="adamw, muon: 1e-3 scratch, 5e-5 fine-tune; lion: /5", group=OPTIM),
    _s("min_lr_ratio", float, 0.1, "cosine floor as a fraction of --lr", min=0, max=1, group=OPTIM),
    _s("weight_decay", float, None, "weight decay", min=0, default_text="adamw, muon 0.1; lion 0.5", group=OPTIM),
    _s("beta1", float, 0.9, "Adam's beta1", min=0, max=1, max_inclusive=False, group=OPTIM),
    _s("beta2", float, 0.99, "Adam's beta2", min=0, max=1, max_inclusive=False, group=OPTIM),
    _s("warmup_steps", int, 100, "linear warmup steps before cosine decay", min=0, group=OPTIM),
    _s("grad_clip", float, 1.0, "clip the gradient norm to this (0: off)", min=0, group=OPTIM),
    _s("ema", float, 0.0, "evaluate and save an exponential moving average of the weights with this decay per "
       "step, e.g. 0.998 (~500 steps; 0: off)", min=0, max=1, max_inclusive=False, metavar="DECAY", group=OPTIM,
       hint="0 is off, 0.998 averages over ~500 steps"),
    _s("batch_size", int, 16, "sequences per micro-batch per process", min=1, group=OPTIM),
    _s("grad_accum", int, 1, "micro-batches per optimizer step (global batch = batch size x this x processes)",
       min=1, group=OPTIM),
    _s("mixed_precision", str, "auto", "auto (bf16/fp16 on GPU, off on CPU), no, fp16, bf16",
       choices=("auto", "no", "fp16", "bf16"), group=OPTIM, resumable=True),
    _s("seed", int, 1337, "seed for init, data order and dropout", min=0, group=OPTIM),
    _s("threads", int, None, "CPU threads for torch per process (1 is often faster on a CPU busy with other jobs)",
       min=1, default_text="one per core", group=OPTIM, resumable=True),

    _s("epochs", float, None, "passes over the training split", min=0, min_inclusive=False,
       default_text="1 if no --max-steps", group=RUN, resumable=True),
    _s("max_steps", int, None, "optimizer steps (caps --epochs)", min=1, default_text="from --epochs", group=RUN,
       resumable=True),
    _s("eval_interval", int, 200, "evaluate every N steps", min=1, group=RUN, resumable=True),
    _s("eval_batch_size", int, 32, "windows per evaluation forward pass", min=1, group=RUN, resumable=True),
    _s("patience", int, 5, "stop after N evaluations without improvement (0: never)", min=0, group=RUN,
       resumable=True),
    _s("min_delta", float, 0.0, "improvement in validation loss that counts", min=0, group=RUN, resumable=True),
    _s("log_interval", int, 50, "log line every N steps when not on a terminal", min=1, group=RUN, resumable=True),
    _s("run_name", str, None, "name of the run; output goes to checkpoints/<run-name>",
       default_text="<dataset>-<base>", group=RUN, resumable=True),
    _s("output", str, None, "run directory", default_text="checkpoints/<run-name>", group=RUN, resumable=True),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
DEFAULTS: dict = {s.name: s.default for s in SETTINGS}
RESUME_OVERRIDABLE = frozenset(s.name for s in SETTINGS if s.resumable)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, grouped as in --help. Values stay strings here (None when not given), so that a
    flag and a recipe key are converted and checked the same way, by `convert`."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for setting in SETTINGS:
        group = groups[setting.group]
        if setting.type is bool:
            group.add_argument(setting.flag, dest=setting.name, action=argparse.BooleanOptionalAction, default=None,
                               help=setting.help_text())
        else:
            metavar = setting.metavar or ("{" + ",".join(setting.choices) + "}" if setting.choices
                                          else {int: "N", float: "X"}.get(setting.type, setting.name.upper()))
            group.add_argument(setting.flag, dest=setting.name, default=None, help=setting.help_text(),
                               metavar=metavar)


def convert(values: dict) -> dict:
    """Each known setting converted to its type and range-checked; one clear line for the first bad one."""
    return {key: BY_NAME[key].validate(value) if key in BY_NAME else value for key, value in values.items()}
