"""SVG snapshots of the main screens (pytest-textual-snapshot). Generation is held still with greedy or a
fixed seed; the timing figures (time to first token, tokens/s) are the one thing that cannot be, so each
test pins them to a fixed text before the screenshot.

Update the baselines after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import time

import pytest

from bardterm.plugins import load_plugins, pm
from bardterm.tui.app import BardtermApp, Options

SIZE = (110, 32)
STATS = "24 tokens · first token 10 ms · 100.0 tokens/s"


@pytest.fixture(scope="module", autouse=True)
def builtins_only():
    """The screens show the built-in decoders only, whatever plugins this machine has installed."""
    load_plugins()
    others = [(name, plugin) for name, plugin in pm.list_name_plugin() if not name.startswith("bardterm.")]
    for name, _ in others:
        pm.unregister(name=name)
    yield
    for name, plugin in others:
        pm.register(plugin, name=name)


@pytest.fixture
def app(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("BARDTERM_HOME", str(tmp_path / "home"))
    return BardtermApp(Options(checkpoint=str(tiny_checkpoint), decoder="greedy", seed=5, max_new_tokens=24))


async def settle(pilot, condition=lambda app: True, timeout: float = 30.0):
    app = pilot.app
    deadline = time.monotonic() + timeout
    while app.host.loaded is None or app.host.choice is None or app.host.generating or not condition(app):
        assert time.monotonic() < deadline, "timed out waiting"
        await pilot.pause(0.02)
    await pilot.pause()
    for editor in app.screen.query("TextArea, Input"):
        editor.cursor_blink = False  # a blinking cursor is caught on or off at random
    app.clear_notifications()
    if app.query("#stats"):
        app.status.show_stats(STATS)
    await pilot.pause()


async def say(pilot, text: str):
    pilot.app.query_one("#prompt").load_text(text)
    await pilot.press("enter")
    await settle(pilot, lambda app: app.chat.stream is None)


def test_chat_after_a_reply(snap_compare, app):
    async def run_before(pilot):
        await settle(pilot)
        await say(pilot, "Good morrow")
        pilot.app.query_one("#prompt").load_text("/de")
        await pilot.pause()
    app.options.decoder = "nucleus"  # seeded sampling: greedy makes this random model say only newlines
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_decoder_panel(snap_compare, app):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f2")
        pilot.app.query_one("#top_k-top_k").value = "0"  # shows an inline error
        await pilot.pause()
    app.options.decoder = "creative"
    assert snap_compare(app, terminal_size=(110, 44), run_before=run_before)


def test_compare(snap_compare, app):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f4")  # greedy, beam search and nucleus sampling
        pilot.app.screen.query_one("#compare-prompt").value = "To be"
        await pilot.press("enter")
        await pilot.pause()
        screen = pilot.app.screen
        await settle(pilot, lambda app: not screen.generating)
        for column in screen.columns:
            column.query_one(".column-stats").update(STATS)
        await pilot.pause()
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_token_inspector(snap_compare, app):
    async def run_before(pilot):
        await settle(pilot)
        await say(pilot, "Speak")
        await pilot.press("f3", "down", "down")
        await pilot.pause()
    app.options.decoder = "nucleus"
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_compose_after_continuing(snap_compare, app):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+t")
        editor = pilot.app.query_one("#draft")
        editor.load_text("To be, or not to be")
        editor.move_cursor(editor.document.end)
        await pilot.press("ctrl+g")
        await settle(pilot, lambda app: app.composer.stream is None)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
