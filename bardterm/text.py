"""Text coming out of a model: decoded a token at a time in whole characters, and made safe to print."""

from __future__ import annotations

import functools
import re

# C0 controls except tab and newline, DEL, C1 controls, and bidirectional overrides ("Trojan Source").
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def sanitize(text: str) -> str:
    """Neutralise terminal control characters and escape sequences: each becomes a visible `\\xNN`/`\\uNNNN`."""
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1] if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                       text)


class IncrementalDecoder:
    """Decodes a growing list of token ids into text, never splitting a multi-byte character.

    Byte-level BPE can cut a character (an emoji, an accented letter) across tokens; until the last bytes
    arrive the decoder yields U+FFFD, so text ending in it is held back. Decoding restarts from a recent
    offset, not the whole sequence, so each step costs the same (the method used by TGI and vLLM).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def reset(self, ids: list[int]) -> str:
        """Start over from `ids` (a beam search changed its mind); returns the complete-character text."""
        self.ids, self.text, self._prefix_offset, self._read_offset = [], "", 0, 0
        for token_id in ids:
            self.add(token_id)
        return self.text

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (may be empty while a character is pending)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self._prefix_offset:self._read_offset])
        full = self._decode(self.ids[self._prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix):]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
            self.text += new
            return new
        return ""

    def finish(self) -> str:
        """Flush whatever is pending at the end (an incomplete character becomes U+FFFD)."""
        full = self._decode(self.ids)
        new = full[len(self.text):] if full.startswith(self.text) else ""
        self.text = full
        return new


def token_piece(tokenizer, token_id: int) -> str:
    """One token's own text, for showing tokens one by one (the inspector).

    A token that holds only part of a UTF-8 character decodes to U+FFFD on its own; it is shown as its bytes
    instead ("\\xe2\\x80"), so two different partial tokens never look the same.
    """
    text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
    if "\ufffd" not in text:
        return text
    raw = _token_bytes(tokenizer, token_id)
    return raw.decode("utf-8", errors="backslashreplace") if raw is not None else text


def _token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The bytes a token stands for, for byte-level BPE (GPT-2) and byte-fallback ("<0xE2>") vocabularies."""
    token = tokenizer.convert_ids_to_tokens(token_id)
    if not isinstance(token, str):
        return None
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
        return bytes([int(token[3:5], 16)])
    byte_of = _byte_of_char()
    if token and all(char in byte_of for char in token):
        return bytes(byte_of[char] for char in token)
    return None


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character that stands for each byte -> the byte."""
    # GPT-2's bytes_to_unicode (as transformers' convert_slow_tokenizer has it): printable bytes stand for
    # themselves, the others for the characters from U+0100 on, in order.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{chr(byte): byte for byte in printable}, **{chr(256 + n): byte for n, byte in enumerate(others)}}
