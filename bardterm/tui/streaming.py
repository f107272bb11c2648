"""One `Generation` running in a thread worker, its updates delivered to a widget as messages.

The worker never waits on the UI: it keeps only the newest `Update` and posts a message when no frame is
pending (`post_message` is thread-safe). The widget takes the newest update and the next frame is allowed
only later, so the UI repaints at a pace it can afford: every repaint is Python holding the GIL and a core
that the model's own threads would use. Frames come at a steady 15 a second, so that text visibly flows even
when a whole reply takes half a second; only when the UI thread's CPU time since the last frame says a frame
costs more than `UI_SHARE` of that time do they come further apart, and never fewer than 8 a second. (In a
real terminal (tmux, 110x32) a frame of the chat costs about 6 ms of the UI thread, the first one about 20 ms:
at the old 5% share that meant 4 to 8 frames a second, and a reply at 170-470 tokens/s arrived in 1 to 3
jumps.) The last token of a burst still shows within one frame; `Finished` or `Failed` always comes last.

The target widget shows each `Updated` and lets it go on up to the app, for the status line; `Finished` and
`Failed` bubble on to the app too, whose one handler records the stats and says what there is to say, for
chat, compose and compare alike.

A processor that never returns holds its thread for good: Python cannot stop a thread. So the UI checks on
each running stream, and once a processor has held one step past the engine's limit it posts `Failed` and
gives the stream up. The app stays usable, and on quit `leave_stuck_threads` exits without waiting for it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual.message import Message

from bardterm.errors import BardtermError

from bardterm.text import sanitize

if TYPE_CHECKING:  # the engine imports torch: only the worker threads need it
    from bardterm.engine import Generation, Result, Stats, Update

FRAME_S = 1 / 15  # the steady pace of repaints
SLOWEST_FRAME_S = 1 / 8  # slowest, however costly a frame is: the text must still flow
UI_SHARE = 0.2  # of the time, what repainting may take from the model before frames come further apart
WATCH_S = 0.5  # how often the UI checks that a running stream's processor is not stuck


class Stream:
    class Updated(Message):
        def __init__(self, stream: "Stream"):
            super().__init__()
            self.stream = stream

    class Finished(Message):
        def __init__(self, stream: "Stream", result: Result):
            super().__init__()
            self.stream = stream
            self.result = result

    class Failed(Message):
        def __init__(self, stream: "Stream", error: str):
            super().__init__()
            self.stream = stream
            self.error = error

    given_up: list["Stream"] = []  # streams given up on because a processor never returned, this process

    def __init__(self, target, generation: Generation, tag: str = "", label: str = ""):
        self.target = target
        self.generation = generation
        self.tag = tag  # which pane's stream this is: "chat", "compose" or "compare"
        self.label = label  # what to call it in a message ("greedy" for a compare column), if anything
        self.latest: Update | None = None
        self.running = False
        self.thread_done = False
        self._watch = None
        self._pending = False  # a frame is posted or scheduled
        self._shown: Update | None = None
        self._ui_time = time.thread_time()
        self._lock = threading.Lock()

    def start(self) -> None:
        self.running = True
        self._watch = self.target.set_interval(WATCH_S, self._check_stuck)
        self.target.app.run_worker(self._run, thread=True, group="generation", exit_on_error=False,
                                   name=f"generation {self.tag}".strip())

    def cancel(self) -> None:
        self.generation.cancel()

    def _check_stuck(self) -> None:
        stuck = self.generation.stuck() if self.running else None
        with self._lock:
            if stuck is None and self.running:
                return
            given_up, self.running = self.running, False
        self._watch.stop()
        if given_up:
            self.generation.cancel()  # a step that polls `run.cancelled` ends now and frees its thread
            Stream.given_up.append(self)
            self.target.post_message(Stream.Failed(self, f"{stuck}: stopped this generation without it (its "
                                                         "thread stays busy); use another decoder"))

    @property
    def shown(self) -> Update | None:
        """The update the target took last (what the screen shows now)."""
        return self._shown

    def take(self) -> Update | None:
        """The newest update (called by the widget on `Updated`), and the next frame scheduled."""
        with self._lock:
            self._shown = self.latest
        ui_time = time.thread_time()  # CPU time of the UI thread: what the last frame (and all else) cost
        used, self._ui_time = ui_time - self._ui_time, ui_time
        self.target.set_timer(frame_delay(used), self._next_frame)
        return self._shown

    def _next_frame(self) -> None:
        with self._lock:
            self._pending = self.running and self.latest is not self._shown
        if self._pending:
            self.target.post_message(Stream.Updated(self))

    def _run(self) -> None:
        try:
            for update in self.generation:
                with self._lock:
                    self.latest = update
                    if self._pending:
                        continue
                    self._pending = True
                self.target.post_message(Stream.Updated(self))
            message = Stream.Finished(self, self.generation.result)
        except BardtermError as error:
            message = Stream.Failed(self, str(error))
        except Exception as error:  # a bug in a model or plugin must not take the app down
            message = Stream.Failed(self, f"generation failed: {type(error).__name__}: {error}")
        finally:
            self.thread_done = True
        with self._lock:
            if not self.running:  # given up on while a processor held this thread: the UI has moved on
                return
            self.running = False
        self.target.post_message(message)


def frame_delay(ui_seconds: float) -> float:
    """How long until the next frame, given the UI thread's CPU time since the last one."""
    return min(SLOWEST_FRAME_S, max(FRAME_S, ui_seconds / UI_SHARE))


def leave_stuck_threads(exit_code: int) -> None:
    """After the app has closed: if a processor still holds a thread, say so and exit without waiting for
    it (Python would wait for ever). Everything is saved by then: the store commits each turn as it ends."""
    stuck = [s for s in Stream.given_up if not s.thread_done]
    if not stuck:
        return
    names = ", ".join(sorted({s.generation.stuck() or "a decoder" for s in stuck}))
    print(f"bardterm: {names}; exiting without waiting for it", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def styled(text: str, committed: int) -> Text:
    """Sanitized text with the part that may still change (a beam search revising) dimmed."""
    result = Text(sanitize(text[:committed]))
    if committed < len(text):
        result.append(sanitize(text[committed:]), style="dim")
    return result


def describe_stats(stats: Stats, running: bool = False) -> str:
    ttft = f"{stats.ttft_s * 1000:.0f} ms" if stats.ttft_s is not None else "-"
    state = "generating… " if running else ""
    return f"{state}{stats.tokens} tokens · first token {ttft} · {stats.tokens_per_s:.1f} tokens/s"
