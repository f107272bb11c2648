"""Killing the app in the middle of a reply loses no finished turn (each is committed as it finishes)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from bardterm.tui.store import Store

SCRIPT = r'''
import asyncio, sys, time
from bardterm.decoders.base import Processor
from bardterm.hookspecs import hookimpl
from bardterm.plugins import load_plugins, pm
from bardterm.tui.app import BardtermApp, Options

class Slow(Processor):
    name = "slow_kill_test"
    help = "Sleeps 50 ms a step."
    def __call__(self, input_ids, scores):
        time.sleep(0.05)
        return scores

class Plugin:
    @hookimpl
    def register_decoders(self, register):
        register(Slow)

async def main():
    load_plugins()
    pm.register(Plugin(), name="kill_test")
    app = BardtermApp(Options(checkpoint=sys.argv[1], seed=3, max_new_tokens=6, decoder="greedy",
                              template="{name}: {text}"))
    async with app.run_test() as pilot:
        while app.host.loaded is None or app.host.choice is None:
            await pilot.pause(0.05)
        for text in ["First line", "Second line", "Third line"]:
            if text == "Third line":
                app.host.max_new_tokens = 100
                app.host.choice.add(app.host.registry, "slow_kill_test")
            app.query_one("#prompt").load_text(text)
            await pilot.press("enter")
            while app.host.generating:
                if app.chat.reply is not None and app.chat.reply.body.plain:
                    print("STREAMING", flush=True)
                await pilot.pause(0.05)

asyncio.run(main())
'''


def test_killed_mid_reply_keeps_finished_turns(tiny_checkpoint, tmp_path):
    script = tmp_path / "drive.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "BARDTERM_HOME": str(tmp_path / "home")}
    process = subprocess.Popen([sys.executable, str(script), str(tiny_checkpoint)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 60
        for line in process.stdout:
            if line.startswith("STREAMING") or time.monotonic() > deadline:
                break
        assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    database = tmp_path / "home" / "conversations.sqlite3"
    assert sqlite3.connect(database).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = Store(database)
    [conversation] = store.conversations()
    turns = [(t.speaker, t.text if t.speaker == "user" else "", t.partial) for t in conversation.turns]
    # both finished exchanges, and the third message; the reply being generated is the only loss
    assert turns == [("user", "First line", False), ("model", "", False), ("user", "Second line", False),
                     ("model", "", False), ("user", "Third line", False)]
    store.close()
