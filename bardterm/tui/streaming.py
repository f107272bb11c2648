"""One `Generation` running in a thread worker, its updates delivered to a widget as messages.

The worker never waits on the UI: it keeps only the newest `Update` and posts a message when no frame is
pending (`post_message` is thread-safe). The widget takes the newest update and the next frame is allowed
only later, so the UI repaints at a pace it can afford: every repaint is Python holding the GIL and a core
that the model's own threads would use. The pace adapts: frames come at most 30 times a second, and further
apart when the UI thread's CPU time since the last frame says they cost more than `UI_SHARE` of the time.
The last token of a burst still shows within one frame; `Finished` or `Failed` always comes last.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual.message import Message

from bardterm.errors import BardtermError

from bardterm.text import sanitize

if TYPE_CHECKING:  # the engine imports torch: only the worker threads need it
    from bardterm.engine import Generation, Result, Stats, Update

FRAME_S = 1 / 30  # fastest repaint
SLOWEST_FRAME_S = 0.25  # slowest, however costly a frame is: the text must still look live
UI_SHARE = 0.05  # of the time, what repainting may take from the model


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

    def __init__(self, target, generation: Generation, tag: str = ""):
        self.target = target
        self.generation = generation
        self.tag = tag  # what the target needs to know which of its streams this is
        self.latest: Update | None = None
        self.running = False
        self._pending = False  # a frame is posted or scheduled
        self._shown: Update | None = None
        self._ui_time = time.thread_time()
        self._lock = threading.Lock()

    def start(self) -> None:
        self.running = True
        self.target.app.run_worker(self._run, thread=True, group="generation", exit_on_error=False,
                                   name=f"generation {self.tag}".strip())

    def cancel(self) -> None:
        self.generation.cancel()

    def take(self) -> Update | None:
        """The newest update (called by the widget on `Updated`), and the next frame scheduled."""
        with self._lock:
            self._shown = self.latest
        ui_time = time.thread_time()  # CPU time of the UI thread: what the last frame (and all else) cost
        used, self._ui_time = ui_time - self._ui_time, ui_time
        self.target.set_timer(min(SLOWEST_FRAME_S, max(FRAME_S, used / UI_SHARE)), self._next_frame)
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
        self.running = False
        self.target.post_message(message)


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
