"""The app driven through Textual's Pilot, on the tiny checkpoint the tests build."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from bardterm.decoders.base import Processor
from bardterm.engine import generate
from bardterm.hookspecs import hookimpl
from bardterm.plugins import load_plugins, pm
from bardterm.registry import build
from bardterm.tui import commands
from bardterm.tui.app import BardtermApp, Options
from bardterm.tui.chat import TurnView
from bardterm.tui.store import Store, Turn


class Slow(Processor):
    """Holds each step a little, so that a test can see a generation while it streams and stop it."""

    name = "slow_test"
    help = "Sleeps 30 ms a step."

    def __call__(self, input_ids, scores):
        time.sleep(0.03)
        return scores


class Broken(Processor):
    """A plugin that goes wrong in the middle of a generation: NaN from the fourth step on."""

    name = "nan_test"
    help = "Returns NaN after three steps."

    def __init__(self, **values):
        super().__init__(**values)
        self.steps = 0

    def __call__(self, input_ids, scores):
        self.steps += 1
        return scores if self.steps <= 3 else torch.full_like(scores, float("nan"))


class Gate(Processor):
    """Holds every generation at its second step (its first token already shown) until the test opens the gate.

    So a test can see several generations streaming at once however slow or loaded the machine is. A test
    that uses it raises the engine's limit for one step (`SLOW_STEP_S`) above the wait, and opens the gate in
    a `finally`.
    """

    name = "gate_test"
    help = "Waits at the second step until the test opens the gate."
    opened = threading.Event()

    def __init__(self, **values):
        super().__init__(**values)
        self.steps = 0

    def __call__(self, input_ids, scores):
        self.steps += 1
        if self.steps == 2:
            Gate.opened.wait(timeout=120.0)
        return scores


class Hang(Processor):
    """A plugin whose fourth step does not return (until the test lets it go, in a `finally`)."""

    name = "hang_test"
    help = "Never returns from its fourth step."
    released = threading.Event()

    def __init__(self, **values):
        super().__init__(**values)
        self.steps = 0

    def __call__(self, input_ids, scores):
        self.steps += 1
        if self.steps == 4:
            Hang.released.wait(timeout=300.0)
        return scores


class HangPolling(Processor):
    """A plugin whose fourth step waits until the run is cancelled: it polls `run.cancelled`."""

    name = "hang_polling_test"
    help = "Waits for a cancel in its fourth step."

    def start_run(self, run):
        self.steps = 0

    def __call__(self, input_ids, scores):
        self.steps += 1
        deadline = time.monotonic() + 60  # without a cancel it would hold its thread for a minute
        while self.steps == 4 and not self.run.cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
        return scores


class TestPlugin:
    @hookimpl
    def register_decoders(self, register):
        register(Slow)
        register(Broken)
        register(Gate)
        register(Hang)
        register(HangPolling)


@pytest.fixture(scope="module", autouse=True)
def test_plugin():
    load_plugins()
    pm.register(TestPlugin(), name="tui_test_plugin")
    yield
    pm.unregister(name="tui_test_plugin")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BARDTERM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


@pytest.fixture
def make_app(tiny_checkpoint, home):
    def make(**options):
        options = {"checkpoint": str(tiny_checkpoint), "seed": 7, "max_new_tokens": 24, **options}
        return BardtermApp(Options(**options))
    return make


async def wait_for(pilot, condition, timeout: float = 120.0):
    """Wait until `condition()` holds; generous, for a slow machine whose cores are busy with other work."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting"
        await pilot.pause(0.02)


async def ready(pilot):
    await wait_for(pilot, lambda: pilot.app.host.loaded is not None and pilot.app.host.choice is not None)


async def submit(pilot, text: str):
    prompt = pilot.app.query_one("#prompt")
    prompt.load_text(text)
    await pilot.press("enter")
    await pilot.pause()


async def reply(pilot, text: str):
    await submit(pilot, text)
    await wait_for(pilot, lambda: not pilot.app.host.generating)
    await pilot.pause()


def messages(app) -> list[str]:
    return [n.message for n in app._notifications]


def stored(home):
    store = Store()
    try:
        return [[(t.speaker, t.text, t.partial) for t in c.turns] for c in store.conversations()]
    finally:
        store.close()


async def test_interactive_before_model_loads_then_chat_turn(make_app, home, tokenizer, gpt2, monkeypatch):
    import bardterm.models

    load = bardterm.models.load_checkpoint

    def slow_load(*args, **kwargs):  # a model that takes a while to load, as a real one does
        time.sleep(1.0)
        return load(*args, **kwargs)

    monkeypatch.setattr(bardterm.models, "load_checkpoint", slow_load)
    app = make_app(decoder="nucleus")
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.query_one("#prompt").has_focus
        await pilot.press(*"Hi")  # typing works at once, while the model loads
        assert app.query_one("#prompt").text == "Hi"
        assert app.host.loaded is None and app.query_one("#loading").display
        assert "loading tiny" in str(app.query_one("#model-status").render())
        await pilot.press("enter")  # too early: said so, and the text stays
        assert any("still loading" in m for m in messages(app)) and app.query_one("#prompt").text == "Hi"
        await ready(pilot)
        assert not app.query_one("#loading").display
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.host.generating and len(app.session.conversation.turns) == 2)
        await pilot.pause()
        user, model = app.session.conversation.turns
        # the reply is what the engine gives for the play-script prompt, cut at the user's next line
        expected = generate(gpt2, tokenizer, "ROMEO:\nHi\n\nJULIET:\n", build("nucleus"), max_new_tokens=24,
                            stop=["\n\n", "\nROMEO:"], seed=7).text.strip()
        assert (user.text, model.text) == ("Hi", expected) and expected
        views = list(app.query(TurnView))
        assert [v.speaker_name for v in views] == ["ROMEO", "JULIET"]
        assert app.query_one("#prompt").text == ""
        assert "tokens/s" in str(app.query_one("#stats").render())
    assert stored(home) == [[("user", "Hi", False), ("model", expected, False)]]


async def test_streams_live_then_esc_stops_and_keeps_partial(make_app, home):
    # a template with no end-of-turn text: the random model cannot end its turn by chance before Esc
    app = make_app(max_new_tokens=100, template="{name}: {text}")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        app.host.choice.add(app.host.registry, "slow_test")
        await submit(pilot, "Speak")
        seen = []
        await wait_for(pilot, lambda: app.chat.reply is not None and len(app.chat.reply.body.plain) > 0)
        seen.append(app.chat.reply.body.plain)
        assert "generating" in str(app.query_one("#stats").render())
        await pilot.pause(0.2)
        seen.append(app.chat.reply.body.plain)
        assert seen[1].startswith(seen[0][:1]) and len(seen[1]) >= len(seen[0])  # it grows while streaming
        # typing and switching panels stay responsive during generation
        await pilot.press("f2")
        assert app.panel.display
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.host.generating)
        await pilot.pause()
        model = app.session.conversation.turns[-1]
        assert model.speaker == "model" and model.partial
        assert model.stats["tokens"] < 100
        assert "stopped" in str(app.query_one("#stats").render())
        assert "(stopped)" in str(list(app.query(TurnView))[-1].render())
    assert stored(home)[0][-1] == ("model", model.text, True)


async def test_quitting_mid_reply_keeps_the_partial_turn(make_app, home):
    app = make_app(max_new_tokens=100, template="{name}: {text}")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        app.host.choice.add(app.host.registry, "slow_test")
        await submit(pilot, "Farewell")
        await wait_for(pilot, lambda: app.chat.reply is not None and len(app.chat.reply.body.plain) > 0)
        await pilot.press("ctrl+q")
    [[user, model]] = stored(home)
    assert user == ("user", "Farewell", False) and model[2] and model[1]


async def test_a_processor_that_never_returns_is_given_up_and_the_app_goes_on(make_app, home, monkeypatch):
    import bardterm.engine
    from bardterm.tui.streaming import Stream

    monkeypatch.setattr(bardterm.engine, "SLOW_STEP_S", 0.5)
    app = make_app(max_new_tokens=8, template="{name}: {text}")
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await ready(pilot)
            app.host.choice.add(app.host.registry, "hang_test")
            before = len(Stream.given_up)
            await submit(pilot, "Hold")
            # without the watchdog, this times out; the stream is read from the list of those given up, since
            # on a loaded machine the whole reply can be given up before the test sees `app.chat.stream` set
            await wait_for(pilot, lambda: len(Stream.given_up) > before and not app.host.generating)
            stuck = Stream.given_up[-1]
            await pilot.pause()
            [error] = [m for m in messages(app) if "hang_test" in m]
            assert "has not returned from one step" in error and "use another decoder" in error
            assert stuck in Stream.given_up and not stuck.thread_done
            assert app.session.conversation.turns[-1].speaker == "model" and app.session.conversation.turns[-1].partial

            app.host.choice.remove("hang_test")  # the app goes on: the next reply streams to its end
            await reply(pilot, "Again")
            assert app.session.conversation.turns[-1].speaker == "model" and not app.session.conversation.turns[-1].partial
            Hang.released.set()
            await wait_for(pilot, lambda: stuck.thread_done)  # it returns late: the UI has moved on, and
            await pilot.pause(0.2)                            # hears nothing more from it
            assert [m for m in messages(app) if "hang_test" in m or "took" in m] == [error]
    finally:
        Hang.released.set()
        Stream.given_up.clear()
    assert [s for s, _, p in stored(home)[0]] == ["user", "model", "user", "model"]


async def test_a_step_given_up_that_polls_the_cancelled_flag_frees_its_thread(make_app, home, monkeypatch):
    import bardterm.engine
    from bardterm.tui.streaming import Stream

    monkeypatch.setattr(bardterm.engine, "SLOW_STEP_S", 0.5)
    app = make_app(max_new_tokens=8, template="{name}: {text}")
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await ready(pilot)
            app.host.choice.add(app.host.registry, "hang_polling_test")
            before = len(Stream.given_up)
            await submit(pilot, "Hold")
            await wait_for(pilot, lambda: len(Stream.given_up) > before and not app.host.generating)
            stuck = Stream.given_up[-1]  # as above: never raced against `app.chat.stream`
            await pilot.pause()
            assert [m for m in messages(app) if "hang_polling_test" in m]  # given up, as any stuck step
            await wait_for(pilot, lambda: stuck.thread_done, timeout=20)  # the cancel ends its step: no busy thread
    finally:
        Stream.given_up.clear()


async def test_regenerate_replaces_the_last_reply(make_app, home):
    app = make_app(seed=None)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await reply(pilot, "Hello")
        first_id = app.session.conversation.turns[-1].id
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not app.host.generating and app.session.conversation.turns[-1].id != first_id)
        await pilot.pause()
        assert [t.speaker for t in app.session.conversation.turns] == ["user", "model"]
        assert len(app.query(TurnView)) == 2
    assert [[s for s, _, _ in turns] for turns in stored(home)] == [["user", "model"]]


async def test_plugin_nan_mid_generation_is_a_notification_and_keeps_the_conversation(make_app, home):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        app.host.choice.add(app.host.registry, "nan_test")
        await reply(pilot, "Trouble")
        assert any("nan_test" in m and "NaN" in m for m in messages(app))
        assert app.session.conversation.turns[0].text == "Trouble"
        assert app.is_running
        # the broken plugin out of the chain, the app carries on
        app.host.choice.remove("nan_test")
        await reply(pilot, "Again")
        assert app.session.conversation.turns[-1].speaker == "model" and not app.session.conversation.turns[-1].partial


async def test_bad_checkpoint_and_missing_default_are_notifications(make_app, home, tmp_path, monkeypatch):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{}")
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 20)
    app = make_app(checkpoint=str(corrupt))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.host.loading is None and app.host.registry is not None)
        await pilot.pause()
        assert any("corrupt" in m for m in messages(app))
        assert "no model" in str(app.query_one("#model-status").render())
        await submit(pilot, "anyone?")
        assert any("/load" in m for m in messages(app))
        assert app.query_one("#prompt").text == "anyone?"  # not lost
    monkeypatch.setattr("bardterm.models.default_checkpoint", lambda: tmp_path / "not-trained-yet")
    app = make_app(checkpoint=None)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.host.registry is not None)
        assert any("--checkpoint" in m and "bardterm train" in m for m in messages(app))


async def test_unknown_start_decoder_falls_back_with_a_notification(make_app):
    app = make_app(decoder="nonesuch")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        assert any("unknown decoder 'nonesuch'" in m and "using creative" in m for m in messages(app))
        assert app.host.choice.label == "creative"


async def test_a_failing_command_is_a_notification(make_app, monkeypatch):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        monkeypatch.setattr(commands, "describe", lambda app: 1 / 0)
        await submit(pilot, "/show")
        assert any("/show failed: ZeroDivisionError" in m for m in messages(app)) and app.is_running


async def test_multiline_input_and_history(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("a", "ctrl+j", "b")
        prompt = app.query_one("#prompt")
        assert prompt.text == "a\nb"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.host.generating and len(app.session.conversation.turns) == 2)
        assert app.session.conversation.turns[0].text == "a\nb"
        await submit(pilot, "/help")
        await pilot.press("up")
        assert prompt.text == "/help"
        await pilot.press("up")
        assert prompt.text == "a\nb"
        await pilot.press("down", "down")  # walks back to the (empty) draft
        assert prompt.text == ""


async def test_decoder_panel(make_app):
    app = make_app()
    async with app.run_test(size=(120, 50)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        panel = app.panel
        assert panel.display
        registry = app.host.registry
        # every registered decoder is there, plugins included, with its declared parameters
        for name, cls in registry.decoders.items():
            for param in cls.params:
                assert panel.query(f"#{name}-{param.name}"), f"{name}.{param.name} has no field"
        top_p = panel.query_one("#top_p-top_p")
        top_p.value = "1.5"
        await pilot.pause()
        assert "must be" in str(top_p.parent.query_one(".error").render())
        assert top_p.parent.has_class("-invalid")
        assert app.host.choice.values["top_p"]["top_p"] == 0.95  # unchanged
        top_p.value = "0.5"
        await pilot.pause()
        assert app.host.choice.values["top_p"]["top_p"] == 0.5 and not top_p.parent.has_class("-invalid")
        panel.query_one("#use-top_k").value = False
        await pilot.pause()
        assert "top_k" not in app.host.choice.chain
        await pilot.click("#up-top_p")
        await pilot.pause()
        assert app.host.choice.chain == ["repetition_penalty", "top_p", "temperature"]
        assert [row.id for row in panel.query_one("#chain").children][:3] == [
            "row-repetition_penalty", "row-top_p", "row-temperature"]
        panel.query_one("#selector").value = "greedy"
        await pilot.pause()
        assert app.host.choice.selector == "greedy"
        panel.query_one("#seed").value = "123"
        await pilot.pause()
        assert app.host.choice.seed == 123
        panel.query_one("#preset").value = "focused"
        await pilot.pause()
        assert app.host.choice.chain == ["temperature", "top_k"] and app.host.choice.values["temperature"]["temperature"] == 0.7
        assert panel.query_one("#use-top_k").value and not panel.query_one("#use-top_p").value
        assert app.host.choice.seed == 123  # a preset keeps the seed
        assert "focused" in str(app.query_one("#decoder-status").render())


async def test_slash_commands(make_app, home, tmp_path):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await submit(pilot, "/decoder")
        assert app.panel.display and app.focused.id == "selector"
        app.query_one("#prompt").focus()
        await submit(pilot, "/decoder greedy")
        assert app.host.choice.selector == "greedy" and app.host.choice.chain == ["repetition_penalty"]  # greedy's default
        assert app.panel.query_one("#selector").value == "greedy"  # the panel follows
        await submit(pilot, "/set top_k 5")
        assert app.host.choice.chain == ["repetition_penalty", "top_k"] and app.host.choice.values["top_k"]["top_k"] == 5
        await submit(pilot, "/set top_k -3")
        assert any("top_k=-3" in m and "must be an integer >= 1" in m for m in messages(app)), messages(app)
        assert app.host.choice.values["top_k"]["top_k"] == 5
        await submit(pilot, "/set seed 11")
        await submit(pilot, "/set max_new_tokens 9")
        await submit(pilot, "/set user HAMLET")
        await submit(pilot, "/set bard OPHELIA")
        await submit(pilot, "/show")
        shown = str(list(app.query(".note"))[-1].render())
        assert "greedy" in shown and "max_new_tokens: 9" in shown and "HAMLET" in shown and "seed 11" in shown
        await submit(pilot, "/help")
        assert "/compare" in str(list(app.query(".note"))[-1].render())
        await submit(pilot, "/bogus")
        assert any("unknown command /bogus" in m for m in messages(app))
        await submit(pilot, "/decoder nonesuch")
        assert any("unknown decoder 'nonesuch'" in m for m in messages(app))
        # completion: Tab completes a command and then its argument
        app.query_one("#prompt").load_text("/exp")
        await pilot.press("tab")
        assert app.query_one("#prompt").text == "/export "
        await pilot.press("j", "tab")
        assert app.query_one("#prompt").text == "/export json "
        app.query_one("#prompt").load_text("")

        await reply(pilot, "Who goes")
        assert app.session.conversation.turns[1].stats["tokens"] <= 9
        assert [t.text for t in app.session.conversation.turns][0] == "Who goes"
        await submit(pilot, "/save Night watch")
        await submit(pilot, "/export md")
        exported = tmp_path / f"bardterm-conversation-{app.session.conversation.id}.md"
        assert f"exported to {exported}" in messages(app)  # the whole path: the folder is not on the screen
        await submit(pilot, f"/export json {tmp_path / 'out.json'}")
        markdown = exported.read_text()
        assert markdown.startswith("# Night watch") and "**HAMLET**:\n\nWho goes" in markdown
        data = json.loads((tmp_path / "out.json").read_text())
        assert data["title"] == "Night watch" and data["turns"][0]["name"] == "HAMLET"
        await submit(pilot, "/export pdf")
        assert any("usage: /export md|json" in m for m in messages(app))

        await submit(pilot, f"/load {tmp_path / 'nowhere'}")
        await wait_for(pilot, lambda: app.host.loading is None)
        await pilot.pause()
        assert any("does not exist" in m for m in messages(app))
        assert app.host.loaded is not None  # the loaded model stays
        await submit(pilot, f"/load {app.host.loaded.path}")
        await wait_for(pilot, lambda: app.host.loading is None)

        await submit(pilot, "/copy")
        assert app.clipboard == app.session.conversation.turns[-1].text
        await submit(pilot, "/theme nord")
        assert app.theme == "nord"
        await submit(pilot, "/clear")
        assert app.session.conversation is None and not app.query(TurnView)
        await submit(pilot, "/compare greedy nucleus")
        assert type(app.screen).__name__ == "CompareScreen"
        await pilot.press("escape")
        await submit(pilot, "/open")
        assert type(app.screen).__name__ == "PickerScreen"
    assert [c[0][1] for c in stored(home)] == ["Who goes"]


async def test_compare_streams_every_setup(make_app, tokenizer, gpt2, monkeypatch):
    import bardterm.engine

    monkeypatch.setattr(bardterm.engine, "SLOW_STEP_S", 300.0)  # the gate below holds a step for a while
    app = make_app()
    async with app.run_test(size=(140, 30)) as pilot:
        await ready(pilot)
        await pilot.press("f4")
        screen = app.screen
        assert [c.setup_name for c in screen.columns] == ["greedy", "beam", "nucleus"]
        for column in screen.columns:  # held at their second step, to see them all running at the same time
            column.choice.add(app.host.registry, "gate_test")
        Gate.opened.clear()
        screen.query_one("#compare-prompt").value = "To be"
        await pilot.press("enter")
        try:
            await wait_for(pilot, lambda: all(c.stream is not None and c.stream.latest for c in screen.columns))
            # greedy and nucleus share one model pass per token; beam search makes its own (batching.py)
            greedy, beam, nucleus = (getattr(c.stream.generation, "batch", None) for c in screen.columns)
            assert greedy is nucleus is not None and beam is None
        finally:
            Gate.opened.set()
        await wait_for(pilot, lambda: not screen.generating)
        await pilot.pause()
        texts = [str(c.query_one(".column-text").render()) for c in screen.columns]
        frame = app.session.frame  # each column is a chat reply: the message framed as the chat frames it
        expected = generate(gpt2, tokenizer, frame.prompt([Turn("user", "To be")]), build("greedy"),
                            max_new_tokens=24, stop=frame.stop()).text
        assert texts[0].strip() == expected.strip()
        assert all(t.strip() for t in texts)
        assert all("tokens/s" in str(c.query_one(".column-stats").render()) for c in screen.columns)
        await pilot.press("escape")
        assert type(app.screen).__name__ != "CompareScreen"
        app.host.choice.set(app.host.registry, "top_p", "0.6")
        await submit(pilot, "/compare greedy current nucleus:top_p=0.5,temperature=0.8 sample")
        columns = app.screen.columns
        assert [c.setup_name for c in columns] == ["greedy", "current", "nucleus:top_p=0.5,temperature=0.8", "sample"]
        assert columns[1].choice.values["top_p"] == {"top_p": 0.6} and columns[1].choice is not app.host.choice
        assert columns[2].choice.chain == ["temperature", "top_p"] and columns[2].choice.values["top_p"]["top_p"] == 0.5
        await pilot.press("escape")
        await submit(pilot, "/compare greedy nucleus:top_p=7")
        assert any("top_p=7" in m for m in messages(app)) and type(app.screen).__name__ != "CompareScreen"
        await submit(pilot, "/compare greedy nucleus:top_p")
        assert any("NAME=VALUE" in m for m in messages(app))
        await submit(pilot, "/compare greedy")
        assert any("2 to 4" in m for m in messages(app))


async def test_token_inspector(make_app):
    app = make_app(decoder="greedy")
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot)
        await reply(pilot, "Look")
        tokens = app.last_tokens
        assert tokens and all(len(t.alternatives) == 5 for t in tokens)
        assert all(t.alternatives[0][1] == pytest.approx(t.prob) for t in tokens)  # greedy picks the top one
        await pilot.press("f3")
        screen = app.screen
        assert type(screen).__name__ == "InspectorScreen"
        assert screen.query_one("#tokens").option_count == len(tokens)
        await pilot.press("down")
        await pilot.pause()
        detail = screen.query_one("#token-details").content
        assert f"{tokens[1].prob:.4f}" in str(detail.title)
        await pilot.press("escape")
        assert type(app.screen).__name__ != "InspectorScreen"


async def test_compose_continue_accept_regenerate_undo(make_app):
    app = make_app(decoder="greedy", max_new_tokens=8)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t")
        editor = app.query_one("#draft")
        assert editor.has_focus
        editor.load_text("To be or END")
        editor.move_cursor((0, 9))
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: not app.host.generating)
        await pilot.pause()
        continued = editor.text
        assert continued.startswith("To be or ") and continued.endswith("END") and len(continued) > len("To be or END")
        await pilot.press("ctrl+b")  # undo
        assert editor.text == "To be or END"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: not app.host.generating)
        await pilot.press("ctrl+r")  # regenerate: greedy gives the same continuation again, once
        await wait_for(pilot, lambda: not app.host.generating)
        await pilot.pause()
        assert editor.text == continued
        await pilot.press("ctrl+l")  # accept: undo no longer removes it, and says why
        await pilot.press("ctrl+b")
        assert editor.text == continued and app.composer.pending is None
        assert any("nothing to undo" in m and "Ctrl+L" in m for m in messages(app))
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: not app.host.generating)
        await pilot.press("x")  # typing on accepts the continuation too
        await pilot.pause()
        typed = editor.text
        await pilot.press("ctrl+b")
        assert app.composer.pending is None and editor.text == typed and "x" in typed


async def test_resume_with_continue_and_picker(make_app, home):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await reply(pilot, "First play")
        await submit(pilot, "/clear")
        await reply(pilot, "Second play")
    app = make_app(resume=True)
    async with app.run_test(size=(100, 30)) as pilot:
        assert [t.text for t in app.session.conversation.turns][0] == "Second play"
        assert len(app.query(TurnView)) == 2
        await ready(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("down", "enter")
        await pilot.pause()
        assert app.session.conversation.turns[0].text == "First play"
        await reply(pilot, "More")
        assert [t.speaker for t in app.session.conversation.turns] == ["user", "model", "user", "model"]
    assert sorted(len(c) for c in stored(home)) == [2, 4]


async def test_closing_the_decoder_panel_gives_typing_back_to_the_message_box(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        prompt = app.query_one("#prompt")
        await pilot.press("f2")
        assert app.focused.id == "selector"
        await pilot.press("f2")  # closed again: what is typed goes to the message box
        await pilot.press(*"hi")
        assert not app.panel.display and prompt.has_focus and prompt.text == "hi"
        await pilot.press("f2", "enter")  # a drop-down open in the panel when it closes
        await pilot.pause()
        await pilot.press("f2")
        await pilot.pause()
        await pilot.press(*"!!")
        assert prompt.has_focus and prompt.text == "hi!!"
        assert not any(s.expanded for s in app.panel.query("Select"))
        await pilot.press("ctrl+t", "f2", "f2", "x")  # on the compose tab, back to the draft
        assert app.query_one("#draft").has_focus and app.query_one("#draft").text == "x"


async def test_status_line_names_the_decoder_in_use(make_app):
    app = make_app(decoder="creative")
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        status = app.query_one("#decoder-status")
        assert str(status.render()).startswith("creative")
        await pilot.press("f2")
        app.panel.query_one("#selector").value = "greedy"  # as a person picks it in the panel
        await pilot.pause()
        assert str(status.render()).startswith("greedy")
        await pilot.press("f2")
        await submit(pilot, "/decoder creative")
        assert str(status.render()).startswith("creative")
        await submit(pilot, "/set temperature 0.5")
        assert str(status.render()).startswith("creative (edited)")
        await submit(pilot, "/set seed 3")
        assert str(status.render()) == "creative (edited) · seed 3"


async def test_ctrl_r_in_compare_runs_the_columns_again_not_the_hidden_chat_reply(make_app):
    app = make_app(seed=None)
    async with app.run_test(size=(140, 30)) as pilot:
        await ready(pilot)
        await reply(pilot, "Hello")
        reply_id = app.session.conversation.turns[-1].id
        await pilot.press("f4")
        screen = app.screen
        assert screen.query_one("#compare-prompt").value == "Hello"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert screen.generating or any("tokens/s" in str(c.query_one(".column-stats").render()) for c in screen.columns)
        await wait_for(pilot, lambda: not app.host.generating)
        await pilot.pause()
        assert all("tokens/s" in str(c.query_one(".column-stats").render()) for c in screen.columns)
        assert app.session.conversation.turns[-1].id == reply_id and len(app.session.turns) == 2
        await pilot.press("f2", "ctrl+t")  # nor do the keys of the chat screen act under the compare screen
        await pilot.pause()
        assert not app.panel.display and app.query_one("#tabs").active == "chat-tab" and app.screen is screen
        await pilot.press("escape")
        await pilot.press("ctrl+r")  # back in the chat, Ctrl+R regenerates the reply as before
        await wait_for(pilot, lambda: not app.host.generating and app.session.turns[-1].id != reply_id)


async def test_set_template_keeps_its_backslash_newlines(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await submit(pilot, r"/set template {name} says:\n{text}\n\n")
        assert app.session.frame.template == "{name} says:\n{text}\n\n"
        await submit(pilot, r"/set template '[{name}] {text}\n'")  # quoted, as before
        assert app.session.frame.template == "[{name}] {text}\n"
        await submit(pilot, r"/set template {text}")
        assert any("invalid template" in m for m in messages(app))
        assert app.session.frame.template == "[{name}] {text}\n"


async def test_a_reply_lost_to_a_crash_can_be_asked_for_after_continue(make_app, home):
    from bardterm.tui.store import Turn

    store = Store()
    conversation = store.new_conversation("tiny", "ROMEO", "JULIET")
    store.add_turn(conversation, Turn("user", "Hello"))
    store.add_turn(conversation, Turn("model", "Hi"))
    store.add_turn(conversation, Turn("user", "Are you there?"))  # then kill -9, mid-reply
    store.close()
    app = make_app(resume=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        assert any("has no reply" in m and "Ctrl+R" in m for m in messages(app))
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not app.host.generating and app.session.turns[-1].speaker == "model")
        await pilot.pause()
        assert [t.speaker for t in app.session.turns] == ["user", "model", "user", "model"]
        assert len(app.query(TurnView)) == 4
        assert not any("nothing to regenerate" in m for m in messages(app))
    assert [s for s, _, _ in stored(home)[0]] == ["user", "model", "user", "model"]


async def test_a_long_chat_leaves_out_whole_old_turns_quietly(make_app, monkeypatch):
    import bardterm.engine

    prompts = []
    original = bardterm.engine.Generation.__init__

    def spy(self, model, tokenizer, prompt, setup, **kwargs):
        prompts.append((prompt, kwargs["max_new_tokens"]))
        original(self, model, tokenizer, prompt, setup, **kwargs)
        assert not self.notices  # the engine had nothing left to cut

    monkeypatch.setattr(bardterm.engine.Generation, "__init__", spy)
    app = make_app(max_new_tokens=40)  # the tiny model's context is 128 tokens
    async with app.run_test(size=(110, 30)) as pilot:
        await ready(pilot)
        for i in range(4):
            await reply(pilot, f"Message {i}: " + "Romeo, Romeo, wherefore art thou? " * 4)
        tokenizer = app.host.loaded.tokenizer
        assert len(tokenizer(app.session.frame.prompt(app.session.turns))["input_ids"]) > 128
        for prompt, max_new in prompts:
            assert prompt.startswith(("ROMEO:\n", "JULIET:\n"))  # a whole turn, never a cut one
            assert len(tokenizer(prompt)["input_ids"]) + max_new <= 128
        assert not prompts[-1][0].startswith("ROMEO:\nMessage 0")  # the oldest turns went first
        assert "ROMEO:\nMessage 3" in prompts[-1][0]  # never the newest
        assert not any("tokens" in m and "context" in m for m in messages(app))  # no toasts about it
        assert "left out of the context" in str(app.query_one("#context-status").render())


def shown_text(widget) -> str:
    """What a widget puts on the screen, its lines joined: clipped text shows clipped."""
    from textual.geometry import Region

    lines = widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))
    return " ".join(" ".join(strip.text.split()) for strip in lines)


async def test_decoder_panel_fits_a_narrow_terminal_and_never_clips_a_range(make_app):
    app = make_app(decoder="creative")
    async with app.run_test(size=(60, 40)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        await pilot.pause()
        assert app.panel.outer_size.width <= 32 and app.query_one("#tabs").outer_size.width >= 28
        for field in app.panel.query("ParamField"):
            if field.display and field.parent.display:
                label = field.query_one(".param-name")
                assert label.region.right <= app.panel.scrollable_content_region.right  # not cut off on the right
                assert shown_text(label).endswith(field.param.allowed()), shown_text(label)
        penalty = app.panel.query_one("#repetition_penalty-repetition_penalty").parent.query_one(".param-name")
        assert "<= 10" in shown_text(penalty)
        await pilot.resize_terminal(140, 40)
        await pilot.pause()
        assert app.panel.outer_size.width == 48


async def test_regenerating_with_a_fixed_seed_says_why_the_reply_is_the_same(make_app):
    app = make_app(seed=7)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await reply(pilot, "Hello")
        first = app.session.turns[-1].text
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not app.host.generating and app.session.turns[-1].speaker == "model")
        await pilot.pause()
        assert app.session.turns[-1].text == first
        assert any("seed is fixed (7)" in m and "/set seed random" in m for m in messages(app))


async def test_ctrl_q_asks_before_losing_unsent_text(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press(*"and one more thing")  # typed (say while the model replies), not sent
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.is_running and any("message box" in m and "Ctrl+Q again" in m for m in messages(app))
        assert app.query_one("#prompt").text == "and one more thing"
        await pilot.press("ctrl+q")  # asked, and answered: quit
        await pilot.pause()
    assert not app.is_running


async def test_messages_say_the_apps_way_not_a_command_line_flag(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await submit(pilot, "/set temperature 0")
        await submit(pilot, f"/load {tmp_path / 'nowhere'}")
        await wait_for(pilot, lambda: app.host.loading is None)
        await pilot.pause()
        said = [m for m in messages(app) if "temperature" in m or "nowhere" in m]
        assert any("/decoder greedy" in m for m in said) and any("/load" in m for m in said), said
        assert not any(" --" in m for m in said), said
        await pilot.press("f2")
        await pilot.pause()
        app.panel.query_one("#temperature-temperature").value = "0"
        await pilot.pause()
        error = str(app.panel.query_one("#temperature-temperature").parent.query_one(".error").render())
        assert "/decoder greedy" in error and "--" not in error
