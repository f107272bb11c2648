"""The TUI's parts that need no terminal: the conversation store, exports, the chat frame, the decoder
choice that the panel and /set edit, command completion."""

from __future__ import annotations

import json
import sqlite3

import pytest

from bardterm.errors import BardtermError
from bardterm.files import umask, write_atomic
from bardterm.params import InvalidParameter, parse_seed
from bardterm.registry import build, get_registry
from bardterm.tui import commands
from bardterm.tui.conversation import ChatFrame
from bardterm.tui.settings import DecoderChoice
from bardterm.tui.store import Store, Turn, data_dir, to_json, to_markdown
from bardterm.tui.streaming import styled


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "c.sqlite3")
    yield store
    store.close()


def test_data_dir_follows_bardterm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BARDTERM_HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home"
    assert Store().path == tmp_path / "home" / "conversations.sqlite3"


def test_each_turn_is_committed_when_added(store, tmp_path):
    conversation = store.new_conversation("ck", "ROMEO", "JULIET")
    store.add_turn(conversation, Turn("user", "Hello"))
    store.add_turn(conversation, Turn("model", "Hi th", partial=True, decoder="greedy", stats={"tokens": 3}))
    # a second connection (another process) sees both turns without any close or flush
    other = sqlite3.connect(tmp_path / "c.sqlite3")
    assert other.execute("SELECT speaker, text, partial FROM turns ORDER BY id").fetchall() == [
        ("user", "Hello", 0), ("model", "Hi th", 1)]
    loaded = store.load(conversation)
    assert [(t.speaker, t.text, t.partial, t.stats) for t in loaded.turns] == [
        ("user", "Hello", False, {}), ("model", "Hi th", True, {"tokens": 3})]


def test_conversations_newest_first_and_empty_ones_hidden(store):
    first = store.new_conversation("ck", "A", "B")
    store.add_turn(first, Turn("user", "one"))
    store.new_conversation("ck", "A", "B")  # never used
    second = store.new_conversation("ck", "A", "B")
    store.add_turn(second, Turn("user", "two"))
    assert [c.id for c in store.conversations()] == [second, first]
    assert store.latest().id == second
    store.add_turn(first, Turn("model", "again"))
    assert store.latest().id == first


def test_delete_turn_and_title(store):
    conversation = store.new_conversation("ck", "A", "B")
    store.add_turn(conversation, Turn("user", "hi"))
    reply = store.add_turn(conversation, Turn("model", "yo"))
    store.delete_turn(reply)
    store.set_title(conversation, "My play")
    loaded = store.load(conversation)
    assert [t.text for t in loaded.turns] == ["hi"] and loaded.label() == "My play"


def test_unknown_conversation_and_unusable_store_are_one_line_errors(store, tmp_path):
    with pytest.raises(BardtermError, match="no conversation 99"):
        store.load(99)
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(BardtermError, match="BARDTERM_HOME"):
        Store(corrupt)


def test_exports(store):
    conversation = store.new_conversation("ck", "ROMEO", "JULIET")
    store.add_turn(conversation, Turn("user", "Speak"))
    store.add_turn(conversation, Turn("model", "I will", partial=True))
    loaded = store.load(conversation)
    markdown = to_markdown(loaded)
    assert markdown.startswith("# Speak\n")
    assert "**ROMEO**:\n\nSpeak" in markdown and "**JULIET** (stopped):\n\nI will" in markdown
    data = json.loads(to_json(loaded))
    assert [(t["name"], t["text"], t["partial"]) for t in data["turns"]] == [
        ("ROMEO", "Speak", False), ("JULIET", "I will", True)]


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out" / "x.md"
    write_atomic(target, "first")
    write_atomic(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["x.md"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask()  # as open() would make it, not mkstemp's 0600
    (tmp_path / "file").write_text("")
    with pytest.raises(BardtermError, match="choose another path"):
        write_atomic(tmp_path / "file" / "child.md", "no")


def test_chat_frame_prompt_and_stop():
    frame = ChatFrame("ROMEO", "JULIET")
    turns = [Turn("user", "Hello "), Turn("model", "Good morrow")]
    assert frame.prompt(turns) == "ROMEO:\nHello\n\nJULIET:\nGood morrow\n\nJULIET:\n"
    assert frame.stop() == ["\n\n", "\nROMEO:"]
    custom = ChatFrame("Q", "A", template="[{name}] {text}\n")
    assert custom.prompt([Turn("user", "hi")]) == "[Q] hi\n[A] "
    assert custom.stop() == ["\n", "\n[Q]"]
    assert ChatFrame(template="{name}: {text}").stop() == ["\nROMEO:"]


@pytest.mark.parametrize("template", ["{text}", "{text} {name}", "{name}: {text} {other}", "{name} {text} {"])
def test_bad_template_refused(template):
    with pytest.raises(BardtermError, match="invalid template"):
        ChatFrame(template=template)


def test_bad_speaker_name_refused():
    with pytest.raises(BardtermError, match="speaker name"):
        ChatFrame("two\nlines", "B")


@pytest.fixture(scope="module")
def registry():
    return get_registry()


def test_choice_from_preset_expands_like_build(registry):
    choice = DecoderChoice.from_name(registry, "creative", seed=4)
    assert choice.selector == "sample" and choice.seed == 4
    assert choice.chain == ["repetition_penalty", "temperature", "top_k", "top_p"]
    assert choice.values["top_p"] == {"top_p": 0.95}
    assert choice.setup(registry).describe() == build("creative", registry=registry).describe()


def test_choice_set_validates_and_joins_chain(registry):
    choice = DecoderChoice.from_name(registry, "greedy")
    assert choice.chain == ["repetition_penalty"]  # greedy's default penalty
    assert choice.set(registry, "top_k", "5") == "top_k"
    choice.set(registry, "temperature", "0.5")
    assert choice.chain == ["repetition_penalty", "temperature", "top_k"]  # each at its default place
    assert choice.setup(registry).chain[2].top_k == 5
    with pytest.raises(InvalidParameter, match="top_k=-1"):
        choice.set(registry, "top_k", "-1")
    with pytest.raises(InvalidParameter, match="unknown setting"):
        choice.set(registry, "nonsense", "1")
    with pytest.raises(InvalidParameter, match="/decoder beam"):
        choice.set(registry, "num_beams", "3")
    assert choice.values["top_k"] == {"top_k": 5}


def test_choice_reorder_and_remove(registry):
    choice = DecoderChoice.from_name(registry, "creative")
    choice.move("top_p", -1)
    assert choice.chain == ["repetition_penalty", "temperature", "top_p", "top_k"]
    choice.move("repetition_penalty", -1)  # already first: stays
    assert choice.chain[0] == "repetition_penalty"
    choice.remove("temperature")
    assert [p.name for p in choice.setup(registry).chain] == ["repetition_penalty", "top_p", "top_k"]


def test_parse_seed():
    assert parse_seed("") is None and parse_seed("random") is None and parse_seed("42") == 42
    assert parse_seed("-1") is None  # llama.cpp's spelling of random
    for bad in ("-2", "1.5", "abc", str(2**63)):
        with pytest.raises(BardtermError, match="invalid seed"):
            parse_seed(bad)


def test_completions(registry):
    def completions(text):
        return commands.completions(text, registry, {"textual-dark": 1, "nord": 2})

    assert completions("/de") == ["/decoder "]
    assert "/decoder nucleus" in completions("/decoder nu")
    assert completions("/set top_") == ["/set top_k", "/set top_n_sigma", "/set top_p"]
    assert completions("/export j") == ["/export json"]
    assert completions("/compare greedy nuc") == ["/compare greedy nucleus"]
    assert completions("/theme n") == ["/theme nord"]
    assert completions("/zzz") == []


def test_styled_dims_the_tail_and_neutralises_control_characters():
    text = styled("safe\x1b[31mred", 4)
    assert text.plain == "safe\\x1b[31mred"
    assert [(span.start, span.style) for span in text.spans] == [(4, "dim")]


def test_importing_the_tui_entry_point_is_cheap():
    """`bardterm --help` imports bardterm.tui: it must not pull in textual, torch or transformers."""
    import subprocess
    import sys

    code = "import sys, bardterm.tui; print(sorted(m for m in ('textual', 'torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_seed_minus_one_means_random_everywhere(monkeypatch, tmp_path):
    from bardterm.cli import build_parser
    from bardterm.tui import app as app_module
    from bardterm.tui import run

    launched = []
    monkeypatch.setattr(app_module.BardtermApp, "run", lambda self: launched.append(self.options))
    assert run(build_parser().parse_args(["--seed", "-1"])) == 0
    assert run(build_parser().parse_args(["--seed", "12"])) == 0
    assert [o.seed for o in launched] == [None, 12]


def test_cli_options_reach_the_app(monkeypatch, tmp_path):
    from bardterm.cli import build_parser
    from bardterm.tui import app as app_module
    from bardterm.tui import run

    launched = []
    monkeypatch.setattr(app_module.BardtermApp, "run", lambda self: launched.append(self.options))
    args = build_parser().parse_args(["--checkpoint", str(tmp_path), "--continue", "--decoder", "greedy", "--seed",
                                      "9", "--user-name", "HAMLET", "--template", "{name}: {text}\\n",
                                      "--max-new-tokens", "50"])
    assert run(args) == 0
    [options] = launched
    assert (options.checkpoint, options.resume, options.decoder, options.seed, options.user_name,
            options.template, options.max_new_tokens) == (str(tmp_path), True, "greedy", 9, "HAMLET",
                                                          "{name}: {text}\n", 50)


@pytest.mark.parametrize("argv, message", [
    (["--template", "{text} only"], "invalid template"),
    (["--plugin", "no_such_plugin_module_xyz"], "--plugin no_such_plugin_module_xyz"),
    (["--seed", "-5"], "invalid seed '-5'"),  # refused the same way as by /set seed and the panel
    (["--dtype", "int16"], "invalid dtype 'int16'"),  # at start-up, not once the window is open
    (["generate", "x", "--seed", "-5"], "invalid seed '-5'"),
])
def test_bad_cli_options_are_one_line_errors(argv, message, capsys):
    from bardterm.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_no_import_circle_in_the_tui():
    """Every import between bardterm.tui modules, at the top or inside a function, goes one way."""
    import ast
    from pathlib import Path

    import bardterm.tui

    folder = Path(bardterm.tui.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        name = "bardterm.tui" if path.stem == "__init__" else f"bardterm.tui.{path.stem}"
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bardterm.tui"):
                found |= {node.module} if node.module != "bardterm.tui" else {f"bardterm.tui.{a.name}" for a in node.names}
        graph[name] = found - {name}
    graph.pop("bardterm.tui")  # the entry point, imported by nothing inside the package

    def visit(module, path):
        assert module not in path, f"import circle: {' -> '.join([*path, module])}"
        for imported in graph.get(module, ()):
            visit(imported, [*path, module])

    for module in graph:
        visit(module, [])


class FakeTokens:
    """Counts a prompt's tokens as its words, so that a test can see the fitting without a tokenizer."""

    def __call__(self, text: str) -> int:
        return len(text.split())


def test_chat_session_keeps_turns_in_the_store_without_a_screen(tmp_path):
    from bardterm.tui.conversation import ChatSession

    reported = []
    session = ChatSession(ChatFrame("ROMEO", "JULIET"), report=reported.append)
    session.open_store(tmp_path / "c.sqlite3")
    session.checkpoint = "ck"
    session.add_turn(Turn("user", "Hello"))
    assert session.awaiting_reply()
    session.add_turn(Turn("model", "Good morrow"))
    assert not session.awaiting_reply() and session.last_text("model") == "Good morrow"
    session.drop_last_reply()
    assert [t.text for t in session.turns] == ["Hello"] and session.awaiting_reply()
    session.drop_last_reply()  # the user's turn stays: there is nothing to take back, a reply is due
    assert [t.text for t in session.turns] == ["Hello"]
    session.add_turn(Turn("model", "Again"))
    session.set_frame(ChatFrame("HAMLET", "OPHELIA"))
    assert "saved conversation" in session.save("Night")
    conversation_id = session.conversation.id
    session.new()
    assert session.turns == []
    with pytest.raises(BardtermError, match="send a message first"):
        session.drop_last_reply()
    resumed = ChatSession(report=reported.append)
    resumed.open_store(tmp_path / "c.sqlite3")
    assert resumed.latest() == conversation_id
    resumed.resume(conversation_id)
    assert [(t.speaker, t.text) for t in resumed.turns] == [("user", "Hello"), ("model", "Again")]
    assert (resumed.frame.user_name, resumed.frame.model_name) == ("HAMLET", "OPHELIA")
    assert resumed.conversation.title == "Night" and resumed.conversation.checkpoint == "ck"
    session.close()
    resumed.close()
    assert reported == []


def test_chat_session_export_names_the_whole_path(tmp_path, monkeypatch):
    from bardterm.tui.conversation import ChatSession

    monkeypatch.chdir(tmp_path)
    session = ChatSession()
    with pytest.raises(BardtermError, match="nothing to export"):
        session.export("md")
    session.add_turn(Turn("user", "Hello"))
    written = session.export("md")
    assert written.is_absolute() and written.parent == tmp_path and written.read_text().startswith("# Hello")


def test_chat_session_reports_a_store_that_fails_and_keeps_the_turn(tmp_path):
    from bardterm.tui.conversation import ChatSession

    reported = []
    session = ChatSession(report=reported.append)
    session.open_store(tmp_path / "c.sqlite3")
    session.store.db.close()  # as if the disk went away
    session.add_turn(Turn("user", "Hello"))
    assert [t.text for t in session.turns] == ["Hello"] and "kept in memory" in reported[0]


def test_reply_prompt_leaves_out_the_oldest_whole_turns():
    from bardterm.tui.conversation import ChatSession

    session = ChatSession(ChatFrame("A", "B", template="{name}: {text}\n"))
    for i in range(10):
        session.add_turn(Turn("user" if i % 2 == 0 else "model", f"w{i} " * 5))
    count = FakeTokens()
    whole = session.reply_prompt(count, context=1000, max_new_tokens=100)
    assert whole.left_out == 0 and whole.notes == [] and whole.max_new_tokens == 100
    assert whole.text == session.frame.prompt(session.turns)
    # 6 words a turn, and "B:" to open the reply: a context of 40 with 20 new tokens keeps the last 3 turns
    fitted = session.reply_prompt(count, context=40, max_new_tokens=20)
    assert fitted.left_out == 7 and fitted.text == session.frame.prompt(session.turns[7:])
    assert fitted.text.startswith("A: w7") is False and fitted.text.startswith("B: w7")
    assert count(fitted.text) <= 20 and fitted.max_new_tokens == 20
    assert fitted.notes == ["7 oldest turns left out of the context"]
    # the reply may have at most what the context leaves; the conversation keeps at least half the context
    short = session.reply_prompt(count, context=40, max_new_tokens=200)
    assert short.text == fitted.text and short.max_new_tokens == 40 - count(short.text)
    assert short.notes[-1] == f"replies up to {40 - count(short.text)} tokens"
    # the newest turn stays even when it alone is too long: the engine keeps its end
    lonely = session.reply_prompt(count, context=4, max_new_tokens=2)
    assert lonely.left_out == 9 and lonely.max_new_tokens == 1


def test_choice_name_says_what_is_in_use(registry):
    choice = DecoderChoice.from_name(registry, "creative")
    assert choice.name(registry) == "creative"
    choice.set(registry, "top_k", "5")
    assert choice.name(registry) == "creative (edited)"
    choice.set(registry, "top_k", "50")  # back as the preset has it
    assert choice.name(registry) == "creative"
    choice.selector = "greedy"
    assert choice.name(registry) == "greedy"
    assert DecoderChoice(selector="beam").name(registry) == "beam"


def test_cli_wording_is_put_the_apps_way():
    from bardterm.tui.wording import for_the_app

    assert for_the_app("temperature 0: use --decoder greedy") == "temperature 0: use /decoder greedy"
    assert for_the_app("x does not exist: pass --checkpoint with a model directory") == \
        "x does not exist: /load a model directory"
    assert for_the_app("the shipped one is missing: pass --checkpoint DIR, or train one") == \
        "the shipped one is missing: type /load DIR, or train one"
    assert for_the_app("pass --allow-pickle only if you trust it") == "start bardterm with --allow-pickle only if you trust it"
    assert for_the_app("(--repetition-penalty 1 for plain argmax)", ["repetition_penalty"]) == \
        "(/set repetition_penalty 1 for plain argmax)"
    assert for_the_app("seeded by --seed") == "seeded by /set seed"
    assert for_the_app("--unknown-flag stays") == "--unknown-flag stays"


def test_frames_come_at_a_steady_pace_that_lets_text_flow():
    from bardterm.tui.streaming import frame_delay

    # a chat frame in a real terminal costs about 6 ms of the UI thread, the first about 20 ms: neither may
    # hold the next frame back more than 1/8 s, or a reply of half a second arrives in a few jumps
    assert frame_delay(0.0) == frame_delay(0.006) == pytest.approx(1 / 15)
    assert frame_delay(0.020) <= 1 / 8
    assert frame_delay(1.0) == pytest.approx(1 / 8)  # however costly, still 8 frames a second


def test_a_paste_with_esc_arrives_whole_and_in_order():
    from textual import events

    from bardterm.tui.paste import PasteSafeParser

    def parse(*reads):
        parser = PasteSafeParser()
        return [(type(t).__name__, getattr(t, "text", None) or getattr(t, "key", None))
                for read in reads for t in parser.feed(read)]

    assert parse("\x1b[200~AAA\x1b[31mBBB CCC\x1b[201~") == [("Paste", "AAA\x1b[31mBBB CCC")]
    long = "x" * 20 + "\x1b[1m" + "y" * 60 + "\x1b" + "z" * 5
    assert parse("a\x1b[200~" + long + "\x1b[201~b") == [("Key", "a"), ("Paste", long), ("Key", "b")]
    # a paste split over several reads, its end marker too
    assert parse("\x1b[200~AA\x1b[3", "1mBB\x1b[2", "01~") == [("Paste", "AA\x1b[31mBB")]
    assert isinstance(list(PasteSafeParser().feed("\x1b[200~hi\x1b[201~"))[0], events.Paste)
