"""Byte-level BPE for scratch models, trained with Hugging Face `tokenizers` on the training split only.

The result is a transformers `PreTrainedTokenizerFast` (tokenizer.json + tokenizer_config.json), so
`AutoTokenizer.from_pretrained(checkpoint_dir)` loads it. `<|endoftext|>` is bos, eos and unk, as in GPT-2.
Training is deterministic for a given text and vocabulary size.
"""

from __future__ import annotations

EOT = "<|endoftext|>"


def train_bpe(text: str, vocab_size: int, *, model_max_length: int | None = None):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        _lines(text), vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOT, eos_token=EOT, unk_token=EOT,
        model_max_length=model_max_length or 1024,
    )
    return tokenizer


def _lines(text: str, chunk: int = 1000):
    lines = text.splitlines(keepends=True)
    for i in range(0, len(lines), chunk):
        yield "".join(lines[i:i + chunk])


def encode(tokenizer, text: str):
    """Token ids of a whole text as a 1-D int64 tensor (no special tokens added)."""
    import torch

    ids = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids if hasattr(
        tokenizer, "backend_tokenizer") else tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def bos_id(tokenizer) -> int:
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
