"""`bardterm generate`, `bardterm decoders` and `bardterm plugins`.

Decoder parameters become flags only for `generate` and only once plugins are loaded, so they are parsed
in a second pass (`decoder_settings`): every parameter any plugin declares can be set from the command line.
"""

from __future__ import annotations

import argparse
import json
import sys

from bardterm.errors import BardtermError
from bardterm.generation import MAX_NEW_TOKENS, MIN_NEW_TOKENS, check_lengths

MAX_LOGPROBS = 20


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for choosing and loading a checkpoint, shared by generate and the TUI."""
    parser.add_argument("--checkpoint", metavar="DIR_OR_HUB_ID",
                        help="model directory, or a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct[@REVISION] "
                             "(downloaded once into the Hugging Face cache); a local directory of that name wins "
                             "(default: the shipped checkpoint)")
    parser.add_argument("--device", help="cuda, mps or cpu (default: cuda, then mps, then cpu)")
    parser.add_argument("--dtype", help="float32, bfloat16, float16, int8 (weight-only) or auto: the fastest this "
                        "machine runs natively at under 0.01 nats/char (default: bfloat16 on CUDA, else float32)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickled .bin weights, which can run code when loaded: only for files you trust")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a checkpoint's own Python code to run: only for authors you trust")


def add_plugin_argument(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    # A subcommand's default must not overwrite `bardterm --plugin X generate`: only the top level has one.
    parser.add_argument("--plugin", action="append", default=[] if top_level else argparse.SUPPRESS,
                        metavar="MODULE_OR_FILE",
                        help="load a decoder plugin from a module name or a .py file (repeatable)")


def add_parsers(subparsers) -> None:
    generate = subparsers.add_parser(
        "generate", help="stream a continuation of PROMPT to stdout", add_help=False,
        description="Stream a continuation of PROMPT. Every decoder parameter is a flag: see `bardterm decoders`.")
    generate.add_argument("-h", "--help", action=_HelpWithDecoderFlags, help="show this help and every decoder flag")
    generate.add_argument("prompt", metavar="PROMPT", help="the text to continue; - reads it from stdin")
    add_model_arguments(generate)
    add_plugin_argument(generate)
    generate.add_argument("--decoder", help="a selector, processor or preset (default: creative)")
    generate.add_argument("--chain", help="processors in the order to apply them, comma-separated "
                          "(default order: `bardterm decoders` shows it)")
    generate.add_argument("--seed", help="seed for sampling: the same seed gives the same text (-1 or 'random': "
                          "a new one each run, the default)")
    generate.add_argument("--max-new-tokens", metavar="N", help=f"{MAX_NEW_TOKENS.help} (default: the settings "
                          f"file's, else {MAX_NEW_TOKENS.default})")
    generate.add_argument("--min-new-tokens", default=MIN_NEW_TOKENS.default, metavar="N",
                          help=f"{MIN_NEW_TOKENS.help} (default {MIN_NEW_TOKENS.default})")
    generate.add_argument("--stop", action="append", default=[], metavar="TEXT",
                          help="stop when this text appears; it is cut from the output (repeatable)")
    generate.add_argument("--json", action="store_true", help="print text, tokens and stats as one JSON object")
    generate.add_argument("--logprobs", type=int, metavar="N",
                          help="with --json: for every generated token, its id, text and log-probability after the "
                               "processor chain, and the top N alternatives with theirs (N from 1 to 20)")
    generate.set_defaults(func=run_generate, decoder_flags=True)

    decoders = subparsers.add_parser("decoders", help="list decoding strategies, their parameters and plugins")
    add_plugin_argument(decoders)
    decoders.set_defaults(func=run_decoders)

    plugins = subparsers.add_parser("plugins", help="list installed plugins, their versions and hooks")
    add_plugin_argument(plugins)
    plugins.set_defaults(func=run_plugins)


def load_requested_plugins(args) -> None:
    """Load --plugin modules, and report installed plugins that failed to load as warnings."""
    from bardterm import plugins

    for spec in getattr(args, "plugin", []):
        plugins.load_plugin(spec)
    plugins.load_plugins()
    for failure in plugins.load_failures:
        warn(failure)


def warn(message: str) -> None:
    print(f"bardterm: warning: {message}", file=sys.stderr)


def decoder_flag_parser(registry) -> argparse.ArgumentParser:
    """One flag per parameter name (`--top-p`), which goes to the decoder in the setup that declares it, and
    one per decoder and parameter (`--contrastive.top-k`), which always works; the second is listed in help
    only where two decoders share the name."""
    from bardterm.registry import qualified_flag

    parser = argparse.ArgumentParser(prog="bardterm generate", add_help=False, allow_abbrev=False)
    group = parser.add_argument_group("decoder flags (DECODER.PARAM is one decoder's parameter; more in "
                                      "`bardterm decoders`)")
    for name, owners in registry.params().items():
        bare = "--" + name.replace("_", "-")
        flags = {"action": argparse.BooleanOptionalAction} if all(p.type is bool for _, p in owners) else {"metavar": "VALUE"}
        if len(owners) == 1:
            owner, param = owners[0]
            about = f"{param.help} [{owner}; {param.allowed()}; default {param.default}]"
        else:
            about = f"declared by {', '.join(owner for owner, _ in owners)}: the one in the setup (else qualify it)"
        group.add_argument(bare, dest=name, default=None, help=about, **flags)
        for owner, param in owners:
            kwargs = {"action": argparse.BooleanOptionalAction} if param.type is bool else {"metavar": "VALUE"}
            shown = f"{param.help} [{param.allowed()}; default {param.default}]" if len(owners) > 1 else argparse.SUPPRESS
            canonical = qualified_flag(owner, name)
            group.add_argument(canonical, dest=f"{owner}.{name}", default=None, help=shown, **kwargs)
            spellings = sorted({f"--{o}.{n}" for o in (owner, owner.replace("_", "-"))
                                for n in (name, name.replace("_", "-"))} - {canonical})
            if spellings:  # `--top-k.top_k` and the like work too, unlisted
                group.add_argument(*spellings, dest=f"{owner}.{name}", default=None, help=argparse.SUPPRESS, **kwargs)
    return parser


def decoder_settings(registry, extra: list[str]) -> dict:
    """Parse the decoder flags left over after the main parse into `build()` settings."""
    parser = decoder_flag_parser(registry)
    values, unknown = parser.parse_known_args(extra)
    if unknown:
        raise BardtermError(f"unrecognised argument {unknown[0]!r}: run `bardterm decoders` for decoder flags, "
                            "or `bardterm generate --help`")
    return {key: value for key, value in vars(values).items() if value is not None}


class _HelpWithDecoderFlags(argparse.Action):
    """`generate --help`: the usual help, then every decoder flag of the decoders loaded (built-ins, installed
    plugins, and any --plugin given before --help)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from bardterm.registry import get_registry

        parser.print_help()
        load_requested_plugins(namespace)
        flags = decoder_flag_parser(get_registry())
        flags.usage = argparse.SUPPRESS
        print("\n" + flags.format_help().strip())
        parser.exit()


def run_generate(args) -> int:
    from bardterm.params import parse_seed
    from bardterm.registry import build, get_registry

    args.seed = parse_seed(args.seed) if args.seed is not None else None
    load_requested_plugins(args)
    registry = get_registry()
    for problem in registry.warnings():
        warn(problem)
    settings = decoder_settings(registry, args.extra)
    setup, args.max_new_tokens = _with_config(args, registry, args.chain, settings)
    args.max_new_tokens, args.min_new_tokens = check_lengths(args.max_new_tokens, args.min_new_tokens)
    if args.logprobs is not None and not (args.json and 1 <= args.logprobs <= MAX_LOGPROBS):
        raise BardtermError(f"invalid --logprobs {args.logprobs}: use it with --json, and N from 1 to {MAX_LOGPROBS}")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt

    from bardterm.engine import Generation
    from bardterm.hub_cli import resolve_with_progress
    from bardterm.models import load_checkpoint

    checkpoint = resolve_with_progress(args.checkpoint, allow_pickle=args.allow_pickle,
                                       trust_remote_code=args.trust_remote_code)
    loaded = load_checkpoint(checkpoint, device=args.device, dtype=args.dtype,
                             allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code)
    if loaded.dtype_note and not args.json:  # auto's choice, or a precision this machine only emulates
        print(f"bardterm: {loaded.dtype_note}", file=sys.stderr)
    generation = Generation(loaded.model, loaded.tokenizer, prompt, setup, max_new_tokens=args.max_new_tokens,
                            min_new_tokens=args.min_new_tokens, stop=args.stop, seed=args.seed,
                            top_alternatives=args.logprobs or 0)
    for notice in generation.notices:
        warn(notice)
    if args.json:
        return _print_json(generation, prompt, setup, args)
    return _stream(generation)


def _with_config(args, registry, chain, flags: dict):
    """The decoder setup and max new tokens: the command line over the settings file (the model's section,
    then [defaults]) over the built-ins. A settings file with an error is named in one warning and left out."""
    from bardterm import config
    from bardterm.registry import build

    settings = config.load_or_warn(warn)
    effective = settings.effective(config.model_names(args.checkpoint),
                                   given={"decoder": args.decoder, "max_new_tokens": args.max_new_tokens})
    decoder, source = effective["decoder"]
    decoder = decoder if source != "built-in" else None  # unset: the flags may imply a selector (--num-beams)
    params = {key[len("params."):]: value for key, (value, _) in effective.items() if key.startswith("params.")}
    setup = build(args.decoder, chain=chain, registry=registry, **flags)  # the command line alone must hold
    if decoder != args.decoder or params:
        try:
            setup = build(decoder, chain=chain, registry=registry, **{**params, **flags})
        except BardtermError as error:
            warn(f"{settings.path}: {error}; using the built-in decoder settings")
    return setup, effective["max_new_tokens"][0]


def _stream(generation) -> int:
    from bardterm.text import sanitize

    printed = 0
    out = sys.stdout
    try:
        for update in generation:
            if update.committed > printed:
                out.write(sanitize(update.text[printed:update.committed]))
                out.flush()
                printed = update.committed
    except BardtermError:
        if printed:  # end the streamed line, so that the error starts on its own
            out.write("\n")
            out.flush()
        raise
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        print("bardterm: interrupted", file=sys.stderr)
        return 130
    out.write("\n")
    out.flush()
    result = generation.result
    print(f"bardterm: {result.stats} (stopped: {result.stop_reason})", file=sys.stderr)
    return 0


def _print_json(generation, prompt: str, setup, args) -> int:
    for _ in generation:
        pass
    result = generation.result
    out = {"prompt": prompt, "text": result.text, "token_ids": result.token_ids, "stop_reason": result.stop_reason,
           "decoder": setup.describe(), "seed": args.seed, "stats": result.stats.as_dict(), "notices": result.notices}
    if args.logprobs:
        from bardterm.text import token_piece

        piece = lambda i: token_piece(generation.tokenizer, i)  # noqa: E731
        out["logprobs"] = [{"id": t.token_id, "text": t.text, "logprob": _finite(t.logprob),
                            "top": [{"id": i, "text": piece(i), "logprob": _finite(lp)} for i, lp in t.top]}
                           for t in result.tokens]
    print(json.dumps(out, ensure_ascii=False))
    return 0


def _finite(logprob: float) -> float | None:
    """JSON has no -inf: a token the chain ruled out gets null."""
    return logprob if logprob > float("-inf") else None


def run_decoders(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from bardterm.registry import DEFAULT_DECODER, get_registry

    load_requested_plugins(args)
    registry = get_registry()
    console = Console()
    table = Table(title="Decoders", title_justify="left", show_lines=True)
    for column in ("name", "kind", "plugin", "parameters (flag: type/range, default)"):
        table.add_column(column)
    kinds = {"selector": 0, "processor": 1}
    for name, cls in sorted(registry.decoders.items(), key=lambda item: (kinds[item[1].kind], item[1].order
                                                                         if item[1].kind == "processor" else 0)):
        params = "\n".join(f"{_flag(registry, name, p)}: {p.allowed()}, default {p.default}\n  {p.help}"
                           for p in cls.params)
        if getattr(cls, "defaults", None):
            params += "\n" * bool(params) + "by name, runs with " + ", ".join(f"{k}={v}" for k, v in cls.defaults.items())
        table.add_row(f"[bold]{name}[/]\n{cls.help}", cls.kind, registry.plugin_of[name], params or "-")
    console.print(table)
    presets = Table(title="Presets (--decoder NAME)", title_justify="left")
    for column in ("name", "selector", "settings", "plugin"):
        presets.add_column(column)
    for preset in registry.presets.values():
        marker = " (default)" if preset.name == DEFAULT_DECODER else ""
        settings = ", ".join(f"{k}={v}" for k, v in preset.settings.items()) or "-"
        presets.add_row(f"[bold]{preset.name}[/]{marker}\n{preset.help}", preset.decoder, settings, preset.plugin)
    console.print(presets)
    processors = sorted((cls.order, name) for name, cls in registry.decoders.items() if cls.kind == "processor")
    console.print("Processors apply in the order given by --chain, or by default: "
                  f"{', '.join(name for _, name in processors)}. Setting a processor's parameter adds it to the chain.")
    for problem in registry.warnings():
        warn(problem)
    return 0


def _flag(registry, decoder: str, param) -> str:
    """`--top-p`, or `--top-k / --contrastive.top-k` where other decoders declare the same name."""
    shared = len(registry.params()[param.name]) > 1
    from bardterm.registry import qualified_flag

    return param.flag + (f" / {qualified_flag(decoder, param.name)}" if shared else "")


def run_plugins(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from bardterm import plugins
    from bardterm.registry import get_registry

    load_requested_plugins(args)
    registry = get_registry()
    table = Table(title="Plugins", title_justify="left")
    for column in ("plugin", "version", "hooks", "registers"):
        table.add_column(column)
    for name, module in plugins.pm.list_name_plugin():
        hooks = ", ".join(sorted(caller.name for caller in plugins.pm.get_hookcallers(module) or []))
        registers = ", ".join(sorted(n for n, owner in registry.plugin_of.items() if owner == name))
        table.add_row(name, plugins.plugin_version(name), hooks, registers or "-")
    Console().print(table)
    for problem in registry.warnings():
        warn(problem)
    return 0
