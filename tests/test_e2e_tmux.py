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


def test_prompt_stream_cancel_quit(tiny_checkpoint, tmp_path):
    plugin = tmp_path / "slow_e2e.py"
    plugin.write_text(SLOW_PLUGIN)
    home = tmp_path / "home"
    session = f"bardterm-e2e-{tmp_path.name}"
    command = " ".join(shlex.quote(part) for part in [
        "env", f"BARDTERM_HOME={home}", bardterm_executable(), "--checkpoint", str(tiny_checkpoint),
        "--plugin", str(plugin), "--decoder", "slow_e2e", "--template", "{name}: {text}", "--seed", "1", "--max-new-tokens", "120"])
    # bardterm's exit status, as the shell that ran it saw it: 128 + N for signal N. (Not tmux's
    # pane_dead_status: tmux marks a pane dead when its terminal closes and reaps the process later, and a
    # loaded machine has shown that "later" to be longer than a minute.)
    exit_file = tmp_path / "exit-status"
    command = "sh -c " + shlex.quote(f"{command}; echo $? > {shlex.quote(str(exit_file))}")
    # remain-on-exit keeps the pane (and any error bardterm printed) after it exits, for the checks below
    started = tmux("new-session", "-d", "-s", session, "-x", "110", "-y", "32", command,
                   ";", "set-option", "-t", session, "remain-on-exit", "on")
    assert started.returncode == 0, started.stderr
    try:
        wait_for_screen(session, lambda text: "tiny · cpu" in text)  # the model is ready
        tmux("send-keys", "-t", session, "-l", "Hello there")
        tmux("send-keys", "-t", session, "Enter")
        first = wait_for_screen(session, lambda text: "generating…" in text and "JULIET" in text)
        wait_for_screen(session, lambda text: "generating…" in text and text != first)  # text is still arriving
        tmux("send-keys", "-t", session, "Escape")
        stopped = wait_for_screen(session, lambda text: "stopped" in text)
        assert "(stopped)" in stopped and "Hello there" in stopped
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
    finally:
        tmux("kill-server")
    store = Store(home / "conversations.sqlite3")
    [conversation] = store.conversations()
    assert [(t.speaker, t.partial) for t in conversation.turns] == [("user", False), ("model", True)]
    assert conversation.turns[0].text == "Hello there" and conversation.turns[1].stats["tokens"] < 120
    store.close()
