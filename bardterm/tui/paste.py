"""A bracketed paste that contains ESC arrives whole and in order (a workaround for Textual's input parser).

Textual's `XTermParser` (8.2) reads an ESC inside a bracketed paste as the start of an escape sequence: the
text from that ESC up to the next one (at most 32 characters) leaves the paste and comes as key presses, ESC
typed as "^", before a `Paste` event with what is left. So pasting `AAA<ESC>[31mBBB CCC` types
`^[31mBBB CCC` and then pastes `AAA`, and a longer paste loses its order and a character. The terminal marks
the paste's end with `ESC[201~`, which no paste can contain, so this parser takes everything up to it as one
`Paste` before Textual's parser sees it. `install()` puts it in place only while Textual still has the bug.
"""

from __future__ import annotations

from textual import events
from textual._xterm_parser import BRACKETED_PASTE_END, BRACKETED_PASTE_START, XTermParser


class PasteSafeParser(XTermParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._paste: str | None = None  # the paste so far, while one is arriving

    def feed(self, data: str):
        if not data:  # the end of input
            yield from super().feed(data)
            return
        while data:
            if self._paste is None:
                start = data.find(BRACKETED_PASTE_START)
                if start == -1:
                    yield from super().feed(data)
                    return
                if start:
                    yield from super().feed(data[:start])
                self._paste, data = "", data[start + len(BRACKETED_PASTE_START):]
            else:
                self._paste += data
                end = self._paste.find(BRACKETED_PASTE_END)
                if end == -1:
                    return  # the rest of the paste comes in a later read
                text, data = self._paste[:end], self._paste[end + len(BRACKETED_PASTE_END):]
                self._paste = None
                yield events.Paste(text.replace("\x00", ""))  # as Textual does: no NUL (textual#1661)


def textual_scrambles_pastes() -> bool:
    """Whether the installed Textual still splits a paste at an ESC (see the module's docstring)."""
    tokens = list(XTermParser().feed(f"{BRACKETED_PASTE_START}A\x1b[1mB{BRACKETED_PASTE_END}"))
    return [(type(t).__name__, getattr(t, "text", None)) for t in tokens] != [("Paste", "A\x1b[1mB")]


def install() -> None:
    """Use `PasteSafeParser` for the terminal's input (Linux and macOS), while Textual needs it."""
    from textual.drivers import linux_driver

    if linux_driver.XTermParser is XTermParser and textual_scrambles_pastes():
        linux_driver.XTermParser = PasteSafeParser
