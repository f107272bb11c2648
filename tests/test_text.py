"""Model text: decoded in whole characters, and neutralised before it reaches a terminal."""

import pytest

from bardterm.text import IncrementalDecoder, sanitize


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),  # colour escape
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # OSC: set the window title
    ("\x1b]52;c;ZXZpbA==\x07", "\\x1b]52;c;ZXZpbA==\\x07"),  # OSC 52: write the clipboard
    ("a\x9b31mb", "a\\x9b31mb"),  # C1 CSI, the one-byte escape
    ("bell\x07 nul\x00 bs\x08 del\x7f", "bell\\x07 nul\\x00 bs\\x08 del\\x7f"),
    ("over\rwrite", "over\\rwrite"),  # a carriage return could overwrite what was shown
    ("x\x85y", "x\\x85y"),
    ("admin\u202e\u2066txt", "admin\\u202e\\u2066txt"),  # bidi overrides ("Trojan Source")
    ("\u2069\u202a", "\\u2069\\u202a"),
])
def test_sanitize_neutralises_control_characters(raw, shown):
    safe = sanitize(raw)
    assert safe == shown
    assert not any(ord(c) < 0x20 and c not in "\n\t" or 0x7f <= ord(c) <= 0x9f for c in safe)


@pytest.mark.parametrize("text", ["line one\nline two\tcolumn", "Ünïcödé and emoji 🎭", "plain ASCII, with \\x1b",
                                  "", "‘quotes’ — and → arrows"])
def test_sanitize_keeps_ordinary_text_newlines_and_tabs(text):
    assert sanitize(text) == text


def utf8_byte_tokens(tokenizer, text):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = bytes_to_unicode()
    return [tokenizer.convert_tokens_to_ids(alphabet[b]) for b in text.encode("utf-8")]


@pytest.mark.parametrize("text", ["Ünïcödé and emoji 🎭", "🎭🎭", "a ä 🎭 b", "ROMEO: plain"])
@pytest.mark.parametrize("how", ["bpe", "bytes"])
def test_incremental_decoding_yields_whole_characters(tokenizer, text, how):
    ids = tokenizer.encode(text) if how == "bpe" else utf8_byte_tokens(tokenizer, text)
    decoder = IncrementalDecoder(tokenizer)
    pieces = []
    for token_id in ids:
        piece = decoder.add(token_id)
        assert "\ufffd" not in piece and "\ufffd" not in decoder.text
        assert text.startswith(decoder.text)
        pieces.append(piece)
    assert "".join(pieces) == decoder.text == text
    assert decoder.finish() == "" and decoder.text == text


def test_a_character_is_held_back_until_its_last_byte(tokenizer):
    ids = utf8_byte_tokens(tokenizer, "a🎭")  # 'a' then the emoji's four bytes
    decoder = IncrementalDecoder(tokenizer)
    assert [decoder.add(i) for i in ids] == ["a", "", "", "", "🎭"]


def test_finish_flushes_an_incomplete_character_as_a_replacement(tokenizer):
    decoder = IncrementalDecoder(tokenizer)
    for token_id in utf8_byte_tokens(tokenizer, "ok🎭")[:-1]:
        decoder.add(token_id)
    assert decoder.text == "ok"
    assert decoder.finish() == "\ufffd" and decoder.text == "ok\ufffd"


def test_reset_decodes_a_new_sequence_from_scratch(tokenizer):
    decoder = IncrementalDecoder(tokenizer)
    for token_id in tokenizer.encode("To be, or"):
        decoder.add(token_id)
    assert decoder.reset(tokenizer.encode("O Romeo 🎭")) == "O Romeo 🎭"
    decoder.add(tokenizer.encode("!")[0])
    assert decoder.text == "O Romeo 🎭!"


def test_special_tokens_are_not_shown(tokenizer):
    decoder = IncrementalDecoder(tokenizer)
    for token_id in tokenizer.encode("end") + [tokenizer.eos_token_id]:
        decoder.add(token_id)
    assert decoder.text == "end"


def test_token_piece_shows_a_partial_character_as_its_bytes(tokenizer):
    from bardterm.text import token_piece

    first, second = utf8_byte_tokens(tokenizer, "🎭")[:2]  # 🎭 is f0 9f 8e ad
    assert token_piece(tokenizer, first) == "\\xf0" and token_piece(tokenizer, second) == "\\x9f"
    whole = tokenizer.encode(" Romeo")
    assert "".join(token_piece(tokenizer, i) for i in whole) == " Romeo"
