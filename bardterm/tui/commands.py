"""Slash commands, in the manner of Ollama and `transformers chat`: their help, completion and dispatch."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from bardterm.errors import BardtermError

if TYPE_CHECKING:
    from bardterm.tui.app import BardtermApp

SESSION_SETTINGS = {
    "seed": "an integer, or 'random'",
    "max_new_tokens": "how many tokens a reply may have (an integer >= 1)",
    "user": "your speaker name in the chat script",
    "bard": "the model's speaker name in the chat script",
    "template": "how a turn is written; {name} and {text}, \\n for a newline",
}

COMMANDS = {
    "/decoder": ("[NAME]", "use a decoder or preset; with no name, open the decoder panel (F2)"),
    "/set": ("NAME VALUE", "set a decoder parameter (top_p 0.8) or a session setting (seed, user, bard, ...)"),
    "/show": ("", "show the model, the decoder setup and the session settings"),
    "/load": ("CHECKPOINT", "load another model directory"),
    "/save": ("[TITLE]", "name the conversation (every turn is already saved as it finishes)"),
    "/export": ("md|json [PATH]", "write the conversation as Markdown or JSON"),
    "/clear": ("", "start a new conversation (the old one stays in the picker, Ctrl+O)"),
    "/compare": ("SETUP SETUP [SETUP [SETUP]]", "the same prompt through 2 to 4 setups side by side; a setup is "
                 "a decoder, a preset or 'current', with settings as in top_p:top_p=0.5,temperature=0.8"),
    "/open": ("", "pick a saved conversation to continue (Ctrl+O)"),
    "/copy": ("", "copy the last reply to the clipboard"),
    "/theme": ("NAME", "switch the colour theme"),
    "/help": ("", "list these commands"),
}


def help_text() -> str:
    lines = [f"{name} {usage}".ljust(36) + " " + summary for name, (usage, summary) in COMMANDS.items()]
    lines.append("settings for /set: " + ", ".join(SESSION_SETTINGS) + ", and every decoder parameter (F2)")
    lines.append("keys: Enter send · Shift+Enter/Ctrl+J newline · Esc stop · Ctrl+R regenerate · F2 decoders · "
                 "F3 token inspector · F4 compare · Ctrl+T chat/compose · Ctrl+O conversations · Ctrl+Q quit")
    return "\n".join(lines)


def completions(text: str, app: "BardtermApp") -> list[str]:
    """Whole-line candidates for what is typed so far."""
    if " " not in text:
        return [name + " " for name in COMMANDS if name.startswith(text)]
    command, _, rest = text.partition(" ")
    if command != "/compare" and (" " in rest.strip() or rest.endswith(" ") and rest.strip()):
        return []
    words: list[str] = []
    registry = app.registry
    if command in ("/decoder", "/compare") and registry is not None:
        words = sorted([*registry.presets, *registry.decoders])
    elif command == "/set":
        words = sorted(SESSION_SETTINGS) + (sorted(registry.params()) if registry is not None else [])
    elif command == "/export":
        words = ["md", "json"]
    elif command == "/theme":
        words = sorted(app.available_themes)
    if command == "/compare":  # several names: complete the last one
        head, _, last = text.rpartition(" ")
        return [f"{head} {w}" for w in words if w.startswith(last)]
    return [f"{command} {w}" for w in words if w.startswith(rest)]


def run(app: "BardtermApp", text: str) -> None:
    """Carry out one command line; a BardtermError becomes a notification."""
    try:
        try:
            words = shlex.split(text)
        except ValueError as error:
            raise BardtermError(f"cannot read that command ({error}): check its quotes")
        name, args = words[0], words[1:]
        handler = _HANDLERS.get(name)
        if handler is None:
            raise BardtermError(f"unknown command {name}: /help lists the commands")
        handler(app, args)
    except BardtermError as error:
        app.notify(str(error), severity="error", timeout=8)
    except Exception as error:  # a bug must cost the command, not the conversation
        app.notify(f"{text.split()[0]} failed: {type(error).__name__}: {error} (a bardterm bug: please report it)",
                   severity="error", timeout=12)


def _usage(name: str) -> BardtermError:
    return BardtermError(f"usage: {name} {COMMANDS[name][0]}")


def _decoder(app, args):
    if not args:
        app.action_toggle_decoders(show=True)
    elif len(args) == 1:
        app.use_decoder(args[0])
    else:
        raise _usage("/decoder")


def _set(app, args):
    if len(args) != 2:
        raise _usage("/set")
    app.set_setting(args[0], args[1])


def _show(app, args):
    app.note(app.describe())


def _load(app, args):
    if len(args) != 1:
        raise _usage("/load")
    app.load_model(args[0])


def _save(app, args):
    app.save_conversation(" ".join(args))


def _export(app, args):
    if not args or args[0] not in ("md", "json") or len(args) > 2:
        raise _usage("/export")
    app.export(args[0], args[1] if len(args) == 2 else None)


def _clear(app, args):
    app.new_conversation()


def _compare(app, args):
    if not 2 <= len(args) <= 4:
        raise BardtermError("usage: /compare SETUP SETUP [SETUP [SETUP]] (2 to 4 decoder or preset names, "
                            "e.g. /compare greedy beam nucleus)")
    app.open_compare(args)


def _open(app, args):
    app.action_conversations()


def _copy(app, args):
    app.copy_last_reply()


def _theme(app, args):
    if len(args) != 1 or args[0] not in app.available_themes:
        raise BardtermError(f"usage: /theme NAME (one of {', '.join(sorted(app.available_themes))})")
    app.theme = args[0]


def _help(app, args):
    app.note(help_text())


_HANDLERS = {"/decoder": _decoder, "/set": _set, "/show": _show, "/load": _load, "/save": _save,
             "/export": _export, "/clear": _clear, "/compare": _compare, "/open": _open, "/copy": _copy,
             "/theme": _theme, "/help": _help}
