"""A tokenizer.json tokenizer without transformers: the `tokenizers` library behind the few methods of
transformers' tokenizers that bardterm calls. `models.load_checkpoint` uses it with `gpt2.py`'s model, for
tokenizers that transformers would not change (no chat template, no tokens added around the text); anything
else loads through transformers' AutoTokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

# tokenizer_config.json's classes that are tokenizer.json as it is; the keys below change what encode or decode do.
PLAIN_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast"}
CHANGING_KEYS = ("chat_template", "add_bos_token", "add_eos_token", "clean_up_tokenization_spaces",
                 "add_prefix_space", "extra_special_tokens", "additional_special_tokens")


def supports(path: Path) -> str | None:
    """Why the tokenizer in checkpoint folder `path` needs transformers, or None if this can load it."""
    settings = _settings(path)
    if not (path / "tokenizer.json").is_file():
        return "no tokenizer.json"
    if settings is None:
        return "no readable tokenizer_config.json"
    if settings.get("tokenizer_class") not in PLAIN_CLASSES:
        return f"tokenizer class {settings.get('tokenizer_class')}"
    changing = [key for key in CHANGING_KEYS if settings.get(key)]
    if changing or any((path / name).exists() for name in ("chat_template.jinja", "special_tokens_map.json",
                                                           "added_tokens.json")):
        return f"tokenizer settings ({', '.join(changing) or 'extra files'})"
    return None


class Tokenizer:
    """transformers' tokenizer interface, as far as bardterm uses it, over a `tokenizers.Tokenizer`."""

    chat_template = None

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as Backend

        self.backend_tokenizer = Backend.from_file(str(path / "tokenizer.json"))
        settings = _settings(path)
        self.eos_token_id = self._id(_token(settings.get("eos_token")))
        self.bos_token_id = self._id(_token(settings.get("bos_token")))

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str, return_tensors: str | None = None, add_special_tokens: bool = True) -> dict:
        ids = self.encode(text, add_special_tokens=add_special_tokens)
        if return_tensors == "pt":
            import torch

            return {"input_ids": torch.tensor([ids], dtype=torch.long)}
        return {"input_ids": ids}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False) -> str:
        # No clean-up of spaces: `supports` refuses a tokenizer configured for it, and bardterm never asks for it.
        ids = [ids] if isinstance(ids, int) else [int(i) for i in ids]
        return self.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **options) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids]


def _settings(path: Path) -> dict | None:
    try:
        settings = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return settings if isinstance(settings, dict) else None


def _token(value) -> str | None:
    """A special token as tokenizer_config.json gives it: a string, or an AddedToken dict with its content."""
    return value.get("content") if isinstance(value, dict) else value
