"""Slash commands, in the manner of Ollama and `transformers chat`: one table (name, usage, help, handler),
from which the help, completion and dispatch are all read.

A handler takes the app and the words after the command name. It works through the app's services
(`app.session`, the conversation; `app.host`, the model and decoder setup) and its panes, and raises
BardtermError for anything the user should fix; `run` shows that as one line.
"""

from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass
from typing import Callable

from bardterm.errors import BardtermError
from bardterm.generation import MAX_NEW_TOKENS
from bardterm.tui.conversation import ChatFrame
from bardterm.params import parse_seed
from bardterm.tui.settings import DecoderChoice

SESSION_SETTINGS = {
    "seed": "an integer >= 0, or 'random'",
    "max_new_tokens": "how many tokens a reply may have (an integer >= 1)",
    "user": "your speaker name in the chat script",
    "bard": "the model's speaker name in the chat script",
    "template": "how a turn is written; {name} and {text}, \\n for a newline",
    "framing": "auto (the model's chat template when it has one), template, or script (a play script)",
}


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    help: str
    handler: Callable[..., None]  # (app, args: list[str]) -> None
    raw: bool = False  # takes the rest of the line as it was typed (no shell-style quoting)


COMMANDS: dict[str, Command] = {}


def command(name: str, usage: str, help: str, raw: bool = False):
    """Add the decorated handler to the table."""
    def register(handler):
        COMMANDS[name] = Command(name, usage, help, handler, raw)
        return handler
    return register


def _usage(name: str) -> BardtermError:
    return BardtermError(f"usage: {name} {COMMANDS[name].usage}")


@command("/decoder", "[NAME]", "use a decoder or preset; with no name, open the decoder panel (F2)")
def _decoder(app, args):
    if not args:
        app.action_toggle_decoders(show=True)
    elif len(args) == 1:
        app.panel.use(args[0])
    else:
        raise _usage("/decoder")


@command("/set", "NAME VALUE", "set a decoder parameter (top_p 0.8) or a session setting (seed, user, bard, ...)",
         raw=True)
def _set(app, args):
    key, _, raw = (args[0] if args else "").strip().partition(" ")
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        raw = raw[1:-1]  # a quoted value, as before: its quotes go
    if not key or not raw:
        raise _usage("/set")
    set_setting(app, key, raw)


def set_setting(app, key: str, raw: str) -> None:
    """`/set KEY VALUE`: a session setting or any decoder parameter, validated before it changes anything."""
    host, session = app.host, app.session
    if key == "seed":
        host.need_registry()
        host.choice.seed = parse_seed(raw)
    elif key == "max_new_tokens":
        host.max_new_tokens = MAX_NEW_TOKENS.validate(raw)
    elif key in ("user", "bard", "template"):
        script = session.script
        names = {"user": script.user_name, "bard": script.model_name, "template": script.template}
        names[key] = raw.replace("\\n", "\n") if key == "template" else raw
        session.set_frame(ChatFrame(names["user"], names["bard"], names["template"]))
        if session.frame.kind == "template":
            app.notify(f"{key} is for the play script: this model chats in its own template (/set framing script)")
    elif key == "framing":
        for note in session.set_framing(raw):
            app.notify(note, severity="warning")
        app.show_framing()
    else:
        host.choice.set(host.need_registry(), key, raw)
    if host.registry is not None:
        app.panel.sync()
    app.notify(f"{key} = {raw}")


@command("/system", "[TEXT]", "set the system prompt (shown at the top, saved with the conversation); "
         "with no text, clear it", raw=True)
def _system(app, args):
    text = args[0].strip() if args else ""
    app.session.set_system(text)
    app.chat.show_system()
    app.notify(f"system prompt: {text}" if text else "no system prompt")


@command("/save-defaults", "", "write this setup (decoder and its settings, system prompt, framing, speakers, "
         "max new tokens) to the settings file, for this model")
def _save_defaults(app, args):
    from bardterm import config, hub

    host, session = app.host, app.session
    registry = host.need_registry()
    if host.loaded is None:
        raise BardtermError("no model is loaded: the settings are saved for a model, so /load one first")
    choice = host.choice
    label = choice.label if choice.label and DecoderChoice.from_name(registry, choice.label).selector == \
        choice.selector else choice.selector
    origin = DecoderChoice.from_name(registry, label)
    owners = registry.params()
    params = {}
    for owner in [choice.selector, *choice.chain]:
        for param, value in choice.values.get(owner, {}).items():
            if origin.values.get(owner, {}).get(param) != value:
                params[param if len(owners.get(param, [])) == 1 else f"{owner}.{param}"] = value
    values = {"decoder": label, "max_new_tokens": host.max_new_tokens, "system": session.system,
              "framing": session.framing, "user_name": session.script.user_name,
              "model_name": session.script.model_name}
    if params:
        values["params"] = params
    name = hub.hub_id_of(host.loaded.path) or host.loaded.path.name
    path = config.save_model_settings(name, values)
    app.notify(f"saved as the settings for {name} in {path}")


@command("/show", "", "show the model, the decoder setup and the session settings")
def _show(app, args):
    app.note(describe(app))


def describe(app) -> str:
    host = app.host
    from bardterm.hub import hub_id_of

    where = f"{hub_id_of(host.loaded.path)} ({host.loaded.path})" if host.loaded and hub_id_of(host.loaded.path) \
        else str(host.loaded.path) if host.loaded else ""
    model = (f"{where} on {host.loaded.device} ({host.loaded.dtype})" if host.loaded
             else f"loading {host.loading}" if host.loading else "none (/load DIR)")
    decoder = host.choice.describe(host.registry) if host.choice else "loading"
    return (f"model: {model}\ndecoder: {decoder}\nmax_new_tokens: {host.max_new_tokens}\n"
            + app.session.describe())


@command("/load", "CHECKPOINT", "load another model: a directory, or a Hub id (owner/name[@revision]), "
         "downloaded once into the Hugging Face cache")
def _load(app, args):
    if len(args) != 1:
        raise _usage("/load")
    app.load_model(args[0])


@command("/save", "[TITLE]", "name the conversation (every turn is already saved as it finishes)")
def _save(app, args):
    app.notify(app.session.save(" ".join(args)))


@command("/export", "md|json [PATH]", "write the conversation as Markdown or JSON (default: in the current folder)")
def _export(app, args):
    if not args or args[0] not in ("md", "json") or len(args) > 2:
        raise _usage("/export")
    app.notify(f"exported to {app.session.export(args[0], args[1] if len(args) == 2 else None)}")


@command("/clear", "", "start a new conversation (the old one stays in the picker, Ctrl+O)")
def _clear(app, args):
    app.chat.clear()
    app.last_tokens = []


@command("/compare", "SETUP SETUP [SETUP [SETUP]]", "the same prompt through 2 to 4 setups side by side; a setup "
         "is a decoder, a preset or 'current', with settings as in top_p:top_p=0.5,temperature=0.8")
def _compare(app, args):
    if not 2 <= len(args) <= 4:
        raise BardtermError("usage: /compare SETUP SETUP [SETUP [SETUP]] (2 to 4 decoder or preset names, "
                            "e.g. /compare greedy beam nucleus)")
    open_compare(app, args)


def open_compare(app, names: list[str]) -> None:
    from bardterm.tui.compare import CompareScreen

    host = app.host
    host.need_registry()
    choices = [compare_setup(host, name) for name in names]
    session = app.session
    frame = lambda text: session.compare_prompt(text, host.count_tokens, host.context(), host.max_new_tokens)  # noqa: E731
    app.push_screen(CompareScreen(host, names, choices, session.last_text("user") or "", frame))


def compare_setup(host, spec: str) -> DecoderChoice:
    """`nucleus`, `current` (the setup in use), or either with settings: `top_p:top_p=0.5,temperature=0.8`."""
    name, _, settings = spec.partition(":")
    choice = copy.deepcopy(host.choice) if name == "current" else \
        DecoderChoice.from_name(host.registry, name, host.choice.seed)
    for setting in filter(None, settings.split(",")):
        key, equals, value = setting.partition("=")
        if not equals:
            raise BardtermError(f"cannot read {setting!r} in {spec!r}: write settings as NAME=VALUE, "
                                "e.g. top_p:top_p=0.5")
        choice.set(host.registry, key.strip(), value.strip())
    choice.setup(host.registry)  # refuse a bad setup now, not in the middle of the run
    return choice


@command("/open", "", "pick a saved conversation to continue (Ctrl+O)")
def _open(app, args):
    app.action_conversations()


@command("/copy", "", "copy the last reply to the clipboard")
def _copy(app, args):
    reply = app.session.last_text("model")
    if reply is None:
        raise BardtermError("no reply to copy yet")
    app.copy_to_clipboard(reply)
    app.notify("copied the last reply")


@command("/theme", "NAME", "switch the colour theme")
def _theme(app, args):
    if len(args) != 1 or args[0] not in app.available_themes:
        raise BardtermError(f"usage: /theme NAME (one of {', '.join(sorted(app.available_themes))})")
    app.theme = args[0]


@command("/help", "", "list these commands")
def _help(app, args):
    app.note(help_text())


def help_text() -> str:
    lines = [f"{c.name} {c.usage}".ljust(36) + " " + c.help for c in COMMANDS.values()]
    lines.append("settings for /set: " + ", ".join(SESSION_SETTINGS) + ", and every decoder parameter (F2)")
    lines.append("keys: Enter send · Shift+Enter/Ctrl+J newline · Esc stop · Ctrl+R regenerate · F2 decoders · "
                 "F3 token inspector · F4 compare · Ctrl+T chat/compose · Ctrl+O conversations · Ctrl+Q quit")
    return "\n".join(lines)


def completions(text: str, registry, themes) -> list[str]:
    """Whole-line candidates for what is typed so far (`registry` None while it loads)."""
    if " " not in text:
        return [name + " " for name in COMMANDS if name.startswith(text)]
    command, _, rest = text.partition(" ")
    if command == "/set" and rest.startswith("framing "):
        return [f"/set framing {w}" for w in ("auto", "template", "script") if w.startswith(rest[len("framing "):])]
    if command != "/compare" and (" " in rest.strip() or rest.endswith(" ") and rest.strip()):
        return []
    words: list[str] = []
    if command in ("/decoder", "/compare") and registry is not None:
        words = sorted([*registry.presets, *registry.decoders])
    elif command == "/set":
        words = sorted(SESSION_SETTINGS) + (sorted(registry.params()) if registry is not None else [])
    elif command == "/export":
        words = ["md", "json"]
    elif command == "/theme":
        words = sorted(themes)
    if command == "/compare":  # several names: complete the last one
        head, _, last = text.rpartition(" ")
        return [f"{head} {w}" for w in words if w.startswith(last)]
    return [f"{command} {w}" for w in words if w.startswith(rest)]


def run(app, text: str) -> None:
    """Carry out one command line; a BardtermError becomes a notification."""
    try:
        name, _, rest = text.strip().partition(" ")
        found = COMMANDS.get(name)
        if found is None:
            raise BardtermError(f"unknown command {name}: /help lists the commands")
        if found.raw:
            args = [rest]
        else:
            try:
                args = shlex.split(rest)
            except ValueError as error:
                raise BardtermError(f"cannot read that command ({error}): check its quotes") from None
        found.handler(app, args)
    except BardtermError as error:
        app.notify(str(error), severity="error", timeout=8)
    except Exception as error:  # a bug must cost the command, not the conversation
        app.notify(f"{text.split()[0]} failed: {type(error).__name__}: {error} (a bardterm bug: please report it)",
                   severity="error", timeout=12)
