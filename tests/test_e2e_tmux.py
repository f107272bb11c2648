"""The real `bardterm` executable in a real terminal (tmux): send a prompt, see text stream, cancel, quit."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bardterm.tui.store import Store

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")

SLOW_PLUGIN = '''
import time
from bardterm.hookspecs import hookimpl
from bardterm.decoders.base import Processor

class SlowE2E(Processor):
    name = "slow_e2e"
    help = "Sleeps 40 ms a step, so that a person (or a test) can watch the stream."
    def __call__(self, input_ids, scores):
        time.sleep(0.04)
        return scores

@hookimpl
def register_decoders(register):
    register(SlowE2E)
'''


def bardterm_executable() -> str:
    beside = Path(sys.executable).parent / "bardterm"
    return str(beside) if beside.exists() else shutil.which("bardterm") or pytest.skip("no bardterm executable")


# a private tmux server, one per test process: neither the user's own sessions nor another test run's are touched
SOCKET = f"bardterm-e2e-test-{os.getpid()}"


def tmux(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TMUX, "-L", SOCKET, "-f", "/dev/null", *args], capture_output=True, text=True, timeout=20)


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session).stdout


def pane(session: str, variable: str) -> str:
    return tmux("display-message", "-p", "-t", session, f"#{{{variable}}}").stdout.strip()


def wait_for_screen(session: str, condition, timeout: float = 120.0) -> str:
    """Wait until `condition(screen text)` holds; generous, for a slow machine whose cores are busy."""
    deadline = time.monotonic() + timeout
    while True:
        text = screen(session)
        if condition(text):
            return text
        assert time.monotonic() < deadline, f"timed out; the screen shows:\n{text}"
        time.sleep(0.1)


HANG_PLUGIN = '''
import time
import bardterm.engine
from bardterm.hookspecs import hookimpl
from bardterm.decoders.base import Processor

bardterm.engine.SLOW_STEP_S = 1.0  # give up on a stuck step after 1 s, not 10, to keep the test short

class HangE2E(Processor):
    name = "hang_e2e"
    help = "Never returns from its third step."
    steps = 0
    def __call__(self, input_ids, scores):
        HangE2E.steps += 1
        while HangE2E.steps == 3:
            time.sleep(0.1)
        return scores

@hookimpl
def register_decoders(register):
    register(HangE2E)
'''


def start_bardterm(checkpoint, tmp_path, plugin_source: str, decoder: str, max_new_tokens: int):
    """`bardterm` with a plugin from a file, in a tmux session; returns the session and the exit-status file."""
    plugin = tmp_path / f"{decoder}.py"
    plugin.write_text(plugin_source)
    session = f"bardterm-e2e-{tmp_path.name}"
    command = " ".join(shlex.quote(part) for part in [
        "env", f"BARDTERM_HOME={tmp_path / 'home'}", bardterm_executable(), "--checkpoint", str(checkpoint),
        "--plugin", str(plugin), "--decoder", decoder, "--template", "{name}: {text}", "--seed", "1",
        "--max-new-tokens", str(max_new_tokens)])
    # bardterm's exit status, as the shell that ran it saw it: 128 + N for signal N. (Not tmux's
    # pane_dead_status: tmux marks a pane dead when its terminal closes and reaps the process later, and a
    # loaded machine has shown that "later" to be longer than a minute.)
    exit_file = tmp_path / "exit-status"
    command = "sh -c " + shlex.quote(f"{command}; echo $? > {shlex.quote(str(exit_file))}")
    # remain-on-exit keeps the pane (and any error bardterm printed) after it exits, for the checks below
    started = tmux("new-session", "-d", "-s", session, "-x", "110", "-y", "32", command,
                   ";", "set-option", "-t", session, "remain-on-exit", "on")
    assert started.returncode == 0, started.stderr
    return session, exit_file


def quit_and_wait(session: str, exit_file) -> int:
    """Ctrl+Q, then bardterm's exit status once it has exited (at most a minute)."""
    tmux("send-keys", "-t", session, "C-q")
    deadline = time.monotonic() + 60
    while not (exit_file.exists() and exit_file.read_text().strip()):
        assert time.monotonic() < deadline, (f"bardterm did not quit on Ctrl+Q (pane_dead "
                                             f"{pane(session, 'pane_dead')!r}); the screen shows:\n{screen(session)}")
        time.sleep(0.1)
    status = int(exit_file.read_text())
    signal = f"signal {status - 128}" if status > 128 else "no signal"
    assert status == 0, (f"bardterm exited with status {status} ({signal}; tmux: pane_dead_status "
                         f"{pane(session, 'pane_dead_status')!r}, pane_dead_signal "
                         f"{pane(session, 'pane_dead_signal')!r}); the screen shows:\n{screen(session)}")
    return status


def send_prompt(session: str, text: str) -> None:
    wait_for_screen(session, lambda screen_text: "tiny · cpu" in screen_text)  # the model is ready
    tmux("send-keys", "-t", session, "-l", text)
    tmux("send-keys", "-t", session, "Enter")


def test_prompt_stream_cancel_quit(tiny_checkpoint, tmp_path):
    session, exit_file = start_bardterm(tiny_checkpoint, tmp_path, SLOW_PLUGIN, "slow_e2e", 120)
    try:
        send_prompt(session, "Hello there")
        first = wait_for_screen(session, lambda text: "generating…" in text and "JULIET" in text)
        wait_for_screen(session, lambda text: "generating…" in text and text != first)  # text is still arriving
        tmux("send-keys", "-t", session, "Escape")
        stopped = wait_for_screen(session, lambda text: "stopped" in text)
        assert "(stopped)" in stopped and "Hello there" in stopped
        quit_and_wait(session, exit_file)
    finally:
        tmux("kill-server")
    store = Store(tmp_path / "home" / "conversations.sqlite3")
    [conversation] = store.conversations()
    assert [(t.speaker, t.partial) for t in conversation.turns] == [("user", False), ("model", True)]
    assert conversation.turns[0].text == "Hello there" and conversation.turns[1].stats["tokens"] < 120
    store.close()


def test_a_processor_that_never_returns_does_not_keep_bardterm_from_quitting(tiny_checkpoint, tmp_path):
    # Python waits for every thread at exit, and a stuck processor's thread never ends: without
    # `leave_stuck_threads`, Ctrl+Q would close the window and leave the process hanging for good
    session, exit_file = start_bardterm(tiny_checkpoint, tmp_path, HANG_PLUGIN, "hang_e2e", 50)
    try:
        send_prompt(session, "Wait for me")
        wait_for_screen(session, lambda text: "has not returned" in text)
        quit_and_wait(session, exit_file)
        printed = tmux("capture-pane", "-p", "-J", "-S", "-", "-t", session).stdout  # scrollback, lines joined
        assert ("bardterm: decoder 'hang_e2e' (plugin 'hang_e2e') has not returned from one step" in printed
                and "exiting without waiting for it" in printed), printed
    finally:
        tmux("kill-server")
    store = Store(tmp_path / "home" / "conversations.sqlite3")
    [conversation] = store.conversations()
    assert [(t.speaker, t.partial) for t in conversation.turns] == [("user", False), ("model", True)]
    store.close()


def test_a_paste_with_esc_arrives_whole_and_in_order(tiny_checkpoint, tmp_path):
    # Only a real terminal shows this: Textual's own parser turned the text after a pasted ESC into key
    # presses, ahead of the rest of the paste (bardterm/tui/paste.py); Pilot never goes through that parser.
    pasted = "AAA\x1b[31mBBB CCC " + "x" * 20 + "\x1b[1m" + "y" * 40 + "\x1b" + "z" * 5
    shown = "AAA\\x1b[31mBBB CCC " + "x" * 20 + "\\x1b[1m" + "y" * 40 + "\\x1bzzzzz"  # ESC visible, never raw
    session, exit_file = start_bardterm(tiny_checkpoint, tmp_path, SLOW_PLUGIN, "slow_e2e", 3)
    try:
        wait_for_screen(session, lambda text: "tiny · cpu" in text)
        buffer = tmp_path / "paste.txt"
        buffer.write_text(pasted)
        tmux("load-buffer", "-b", "wt", str(buffer))
        tmux("paste-buffer", "-p", "-b", "wt", "-t", session)  # -p: as a bracketed paste, as terminals paste
        wait_for_screen(session, lambda text: "AAA\\x1b[31mBBB CCC" in text and "x\\x1b[1my" in text)
        tmux("send-keys", "-t", session, "Enter")
        wait_for_screen(session, lambda text: "first token" in text and "generating" not in text)
        quit_and_wait(session, exit_file)
    finally:
        tmux("kill-server")
    store = Store(tmp_path / "home" / "conversations.sqlite3")
    [conversation] = store.conversations()
    assert conversation.turns[0].text == shown
    store.close()
