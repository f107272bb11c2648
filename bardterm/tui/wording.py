"""Messages written for the command line, reworded for a person in the app.

Errors and hints are shared with the CLI (and a plugin's hint is written once by its author, often as
"use --decoder greedy"), so they name flags. In the app a flag is no help: the same thing is a slash
command, or, for what only applies at start-up, a flag to start bardterm with.
"""

from __future__ import annotations

import re

_REWORDINGS = [
    (re.compile(r"\b(?:pass|use|give) --checkpoint with\b"), "/load"),
    (re.compile(r"\b(?:pass|use|give) --checkpoint\b(?: DIR)?"), "type /load DIR"),
    (re.compile(r"--decoder\b"), "/decoder"),
    (re.compile(r"--seed\b"), "/set seed"),
    (re.compile(r"--max-new-tokens\b"), "/set max_new_tokens"),
    (re.compile(r"--chain ''"), "an empty processor chain (F2)"),
    (re.compile(r"--chain\b"), "the processor chain (F2)"),
    (re.compile(r"\b(?:pass|try|use) (--allow-pickle|--trust-remote-code|--device)\b"), r"start bardterm with \1"),
]
_PARAMETER_FLAG = re.compile(r"--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)\b")


def for_the_app(message: str, parameters=()) -> str:
    """`message` with CLI flags put the app's way; `parameters`: decoder parameter names, whose flags
    (--top-p) become /set (top_p)."""
    for pattern, replacement in _REWORDINGS:
        message = pattern.sub(replacement, message)
    names = set(parameters)

    def parameter(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        return f"/set {name}" if name in names else match.group(0)

    return _PARAMETER_FLAG.sub(parameter, message)
