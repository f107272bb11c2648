"""The real `bardterm` executable in a real terminal (tmux): send a prompt, see text stream, cancel, quit."""

from __future__ import annotations

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


SOCKET = "bardterm-e2e-test"  # a private tmux server: the user's own sessions are never touched


def tmux(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TMUX, "-L", SOCKET, "-f", "/dev/null", *args], capture_output=True, text=True, timeout=20)


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session).stdout


def pane(session: str, variable: str) -> str:
    return tmux("display-message", "-p", "-t", session, f"#{{{variable}}}").stdout.strip()


def wait_for_screen(session: str, condition, timeout: float = 60.0) -> str:
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
    # remain-on-exit keeps the pane (and any error bardterm printed) after it exits, for the checks below
    started = tmux("new-session", "-d", "-s", session, "-x", "110", "-y", "32", command,
                   ";", "set-option", "-t", session, "remain-on-exit", "on")
    assert started.returncode == 0, started.stderr
    try:
        wait_for_screen(session, lambda text: "tiny · cpu" in text)  # the model is ready
        tmux("send-keys", "-t", session, "-l", "Hello there")
        tmux("send-keys", "-t", session, "Enter")
        first = wait_for_screen(session, lambda text: "generating…" in text and "JULIET" in text)
        time.sleep(0.5)
        later = screen(session)
        assert "generating…" in later and later != first  # text is still arriving
        tmux("send-keys", "-t", session, "Escape")
        stopped = wait_for_screen(session, lambda text: "stopped" in text)
        assert "(stopped)" in stopped and "Hello there" in stopped
        tmux("send-keys", "-t", session, "C-q")
        deadline = time.monotonic() + 20
        while pane(session, "pane_dead") != "1":
            assert time.monotonic() < deadline, "bardterm did not quit on Ctrl+Q"
            time.sleep(0.1)
        assert pane(session, "pane_dead_status") == "0"
    finally:
        tmux("kill-server")
    store = Store(home / "conversations.sqlite3")
    [conversation] = store.conversations()
    assert [(t.speaker, t.partial) for t in conversation.turns] == [("user", False), ("model", True)]
    assert conversation.turns[0].text == "Hello there" and conversation.turns[1].stats["tokens"] < 120
    store.close()
