"""`bardterm` with no subcommand: the Textual chat and composer.

Kept cheap to import (no torch, transformers or textual here) so that `bardterm --help` stays fast; the
app itself is imported in `run`.
"""

from __future__ import annotations

import argparse

from bardterm.errors import BardtermError
from bardterm.generation import MAX_NEW_TOKENS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The top-level options, which apply to the app."""
    from bardterm.generate_cli import add_model_arguments, add_plugin_argument  # both cheap: argparse only

    group = parser.add_argument_group("chat and composer (no subcommand)")
    add_model_arguments(group)
    add_plugin_argument(group, top_level=True)
    group.add_argument("--decoder", metavar="NAME", help="decoder or preset to start with (default: creative)")
    group.add_argument("--seed", metavar="N", help="seed every generation: a whole number >= 0, or random (-1 or "
                       "'random', the default)")
    group.add_argument("--max-new-tokens", metavar="N",
                       help=f"{MAX_NEW_TOKENS.help} (default: {MAX_NEW_TOKENS.default})")
    group.add_argument("--system", metavar="TEXT", help="the system prompt (/system changes it)")
    group.add_argument("--framing", choices=("auto", "template", "script"),
                       help="how chat turns are written: the model's chat template, or a play script between two "
                            "speakers (default: auto, the template when the model has one)")
    group.add_argument("--user-name", metavar="NAME", help="your speaker name in a play script (default: ROMEO)")
    group.add_argument("--model-name", metavar="NAME",
                       help="the model's speaker name in a play script (default: JULIET)")
    group.add_argument("--template", metavar="TEXT", help="how a chat turn is written, with {name} and {text} "
                       "(default: '{name}:\\n{text}\\n\\n')")
    group.add_argument("--continue", dest="resume", action="store_true", help="continue the latest conversation")


def run(args: argparse.Namespace) -> int:
    """Open the app; raises BardtermError (shown as one line by the CLI) for a bad option."""
    from bardterm import config
    from bardterm.models import default_checkpoint
    from bardterm.params import parse_seed
    from bardterm.plugins import load_plugin
    from bardterm.precision import resolve as resolve_precision
    from bardterm.tui.app import BardtermApp, Options
    from bardterm.tui.conversation import ChatFrame

    for spec in getattr(args, "plugin", None) or []:
        load_plugin(spec)
    template = args.template.replace("\\n", "\n") if args.template else None
    # refuse bad options now, with one line, not once the window is open
    seed = parse_seed(args.seed) if args.seed is not None else None
    if args.dtype:
        resolve_precision(args.dtype, "cpu")  # only its name is checked here: the device's own check comes at loading
    # The settings file under the command line: the model's section, then [defaults], then the built-ins.
    notes: list[str] = []
    settings = config.load_or_warn(notes.append)
    longest = MAX_NEW_TOKENS.validate(args.max_new_tokens) if args.max_new_tokens is not None else None
    given = {"decoder": args.decoder, "max_new_tokens": longest, "system": args.system,
             "framing": args.framing, "user_name": args.user_name, "model_name": args.model_name}
    values = settings.settings(config.model_names(args.checkpoint or str(default_checkpoint())), given)
    try:
        ChatFrame(values["user_name"], values["model_name"], **({"template": template} if template else {}))
    except BardtermError:
        if args.user_name or args.model_name or template:
            raise  # a bad option: one line, now
        notes.append(f"{settings.path}: invalid speaker names; using the built-in ones")
        values["user_name"], values["model_name"] = "ROMEO", "JULIET"
    options = Options(checkpoint=args.checkpoint, device=args.device, dtype=args.dtype, decoder=values["decoder"],
                      seed=seed, resume=args.resume, allow_pickle=args.allow_pickle,
                      trust_remote_code=args.trust_remote_code, user_name=values["user_name"],
                      model_name=values["model_name"], template=template, max_new_tokens=values["max_new_tokens"],
                      system=values["system"], framing=values["framing"], decoder_params=values["params"],
                      settings=settings, given=frozenset(k for k, v in given.items() if v is not None), notes=notes)
    app = BardtermApp(options)
    app.run()
    return app.return_code or 0
