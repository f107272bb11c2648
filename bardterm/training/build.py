"""What a run starts from: a scratch GPT-2 or a pretrained base (float32 master weights), each epoch's
training tokens, and the optimizer."""

from __future__ import annotations

import torch
from lion_pytorch import Lion
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from bardterm.errors import BardtermError
from bardterm.hub_cli import resolve_with_progress
from bardterm.training.bpe_dropout import BPEDropout
from bardterm.training.muon import Muon, hidden_matrices
from bardterm.training.rename import SpeakerRenamer
from bardterm.training.tokenizer import bos_id, encode


def attn_dropout(config: dict) -> float:
    """Dropout on attention probabilities: --attn-dropout, else --dropout (as every run before the flag existed)."""
    return config["dropout"] if config.get("attn_dropout") is None else config["attn_dropout"]


def load_base(config: dict):
    """(model, tokenizer) of a pretrained base: a local directory, or a Hub id fetched into the Hugging Face cache
    (safetensors only) through the same resolver as every other command (hub.py)."""
    hf_logging.disable_progress_bar()
    base = config["base"]
    try:
        path = resolve_with_progress(base)
    except BardtermError as error:
        raise BardtermError(f"{error}; or train from scratch with --base scratch --preset small") from None
    if not path.is_dir():
        raise BardtermError(f"base {base} is not a directory; give a checkpoint directory, a Hub id, or --base scratch")
    try:
        model_config = AutoConfig.from_pretrained(path)
        for key in ("resid_pdrop", "embd_pdrop", "dropout", "hidden_dropout"):
            if hasattr(model_config, key):
                setattr(model_config, key, config["dropout"])
        for key in ("attn_pdrop", "attention_dropout"):
            if hasattr(model_config, key):
                setattr(model_config, key, attn_dropout(config))
        # float32 master weights whatever the storage dtype (the shipped checkpoint is float16, and Adam
        # in float16 diverges at step 2); mixed precision stays the choice of --mixed-precision.
        model = AutoModelForCausalLM.from_pretrained(path, config=model_config, use_safetensors=True,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BardtermError(f"cannot load base model {base!r} ({first[:160]}); check the id or directory") from None
    return model, tokenizer


def build_scratch(config: dict, tokenizer):
    vocab = len(tokenizer)
    model_config = GPT2Config(
        vocab_size=vocab,
        n_positions=config["block_size"],
        n_embd=config["n_embd"],
        n_layer=config["n_layer"],
        n_head=config["n_head"],
        resid_pdrop=config["dropout"],
        embd_pdrop=config["dropout"],
        attn_pdrop=attn_dropout(config),  # 0: SDPA's fused kernel, no (batch, heads, T, T) probabilities or masks
        activation_function=config["activation"],
        bos_token_id=bos_id(tokenizer),
        eos_token_id=bos_id(tokenizer),
        tie_word_embeddings=config["tie_weights"],
    )
    torch.manual_seed(config["seed"])
    model = GPT2LMHeadModel(model_config)
    return model


def retokenize(config: dict, tokenizer, dataset):
    """Each epoch's own training tokens, seeded by (seed, epoch), with speaker renaming and/or BPE-dropout;
    None when both are off (every epoch then uses the same tokens)."""
    if not config.get("bpe_dropout") and not config.get("rename_speakers"):
        return None
    text = dataset.splits["train"]
    try:
        renamer = SpeakerRenamer(text, config["rename_speakers"])
    except ValueError as error:
        raise BardtermError(f"--rename-speakers: {error}; drop the flag for this dataset") from None
    try:
        dropper = BPEDropout(tokenizer, config["bpe_dropout"]) if config["bpe_dropout"] else None
    except (ValueError, AttributeError):
        raise BardtermError(f"--bpe-dropout needs a byte-level BPE tokenizer, which {config['base']} does not "
                            "have; drop the flag") from None

    rename_epochs = config.get("rename_epochs") or 0  # absent from configs saved before it existed

    def tokens(epoch: int):
        seed = config["seed"] * 1_000_003 + epoch
        renaming = not rename_epochs or epoch < rename_epochs
        # 2 * seed + 1: renaming's own random stream, apart from BPE-dropout's
        epoch_text = renamer.rename(text, 2 * seed + 1) if renaming else text
        return torch.tensor(dropper.encode(epoch_text, seed), dtype=torch.long) if dropper else encode(
            tokenizer, epoch_text)

    return tokens


def make_optimizer(model, config: dict):
    decay, no_decay = [], []
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    betas = (config["beta1"], config["beta2"])
    if config["optimizer"] == "muon":
        hidden = hidden_matrices(model)
        groups = [{"params": [p for p in decay if id(p) in hidden], "weight_decay": config["weight_decay"],
                   "use_muon": True},
                  {"params": [p for p in decay if id(p) not in hidden], "weight_decay": config["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        return Muon(groups, lr=config["lr"], betas=betas)
    if config["optimizer"] == "lion":
        return Lion(groups, lr=config["lr"], betas=betas)
    return torch.optim.AdamW(groups, lr=config["lr"], betas=betas, foreach=True)
