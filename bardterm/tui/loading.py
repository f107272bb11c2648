"""Loading, for the app: the decoder registry (the first time) and a model, in a thread worker, so that the
window stays usable meanwhile; a Hub model's download shown in the status line; and, once a model is in, its
framing and its section of the settings file.

A mixin of `BardtermApp`: it uses the app's services (`host`, `session`), its options and its panes.
"""

from __future__ import annotations

import time
from pathlib import Path

from textual import work

from bardterm.errors import BardtermError
from bardterm.tui.conversation import ChatFrame


class ModelLoading:
    def load_model(self, checkpoint: str | Path | None) -> None:
        """Load the registry (first time) and `checkpoint` in a worker; the UI stays usable meanwhile."""
        if self.host.generating:
            raise BardtermError("a generation is running: press Esc to stop it, then /load again")
        self.host.loading = str(checkpoint) if checkpoint else None
        self._show_model_status()
        self._load(checkpoint)

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load(self, checkpoint) -> None:
        try:
            if self.host.registry is None:
                from bardterm.registry import get_registry

                self._from_thread(self._registry_ready, get_registry())
            if checkpoint is None:
                self._from_thread(self._model_failed, None)
                return
            from bardterm.models import load_checkpoint, resolve_checkpoint

            o = self.options
            notes: list[str] = []
            path = resolve_checkpoint(checkpoint, allow_pickle=o.allow_pickle, trust_remote_code=o.trust_remote_code,
                                      progress=self._download_progress, notify=notes.append)
            self._from_thread(self._downloaded, notes)
            loaded = load_checkpoint(path, o.device, o.dtype, o.allow_pickle, o.trust_remote_code)
        except BardtermError as error:
            self._from_thread(self._model_failed, str(error))
            return
        except Exception as error:  # a bug in a checkpoint's code must not take the app down
            self._from_thread(self._model_failed, f"could not load {checkpoint}: {type(error).__name__}: {error}")
            return
        self._from_thread(self._model_ready, loaded, str(checkpoint))

    def _download_progress(self, event) -> None:
        """From the loading worker: a Hub download's bytes so far (the bar moves at most 10 times a second)."""
        now = time.monotonic()
        if now - self._progress_shown >= 0.1 or event.done >= event.total:
            self._progress_shown = now
            self._from_thread(self._show_download, event)

    def _show_download(self, event) -> None:
        self.status.show_download(event.repo, event.file, event.done, event.total)

    def _downloaded(self, notes: list[str]) -> None:
        self._show_model_status()  # the bar goes
        for note in notes:
            self.notify(note, severity="warning", timeout=10)

    def _from_thread(self, callback, *args) -> None:
        try:
            self.call_from_thread(callback, *args)
        except RuntimeError:
            pass  # the app closed while loading

    async def _registry_ready(self, registry) -> None:
        from bardterm.plugins import load_failures
        from bardterm.registry import DEFAULT_DECODER
        from bardterm.tui.settings import DecoderChoice

        self.host.registry = registry
        for problem in [*load_failures, *registry.warnings()]:
            self.notify(problem, title="plugin problem", severity="warning", timeout=12)
        try:
            choice = DecoderChoice.from_name(registry, self.options.decoder or DEFAULT_DECODER, self.options.seed)
        except BardtermError as error:
            self.notify(f"{error}; using {DEFAULT_DECODER}", severity="error", timeout=12)
            choice = DecoderChoice.from_name(registry, DEFAULT_DECODER, self.options.seed)
        for key, value in self.options.decoder_params.items():  # from the settings file
            try:
                choice.set(registry, key, value)
            except BardtermError as error:
                self.notify(f"settings file {self.options.settings.path if self.options.settings else ''}: "
                            f"params.{key}: {error}; left out", severity="error", timeout=15)
        self.host.choice = choice
        await self.panel.populate(registry)
        self.show_decoder()

    def _model_ready(self, loaded, spec: str) -> None:
        from bardterm import hub
        from bardterm.chat_format import end_of_turn_ids

        self.host.loaded, self.host.loading = loaded, None
        self.session.checkpoint = hub.hub_id_of(loaded.path) or str(loaded.path)  # what /load takes again
        self.sub_title = hub.display_name(loaded.path)
        names = (self.session.frame.user_name, self.session.frame.model_name)
        for note in self.session.use_model(loaded.tokenizer, end_of_turn_ids(loaded.model, loaded.tokenizer)):
            self.notify(note, severity="warning", timeout=12)
        self._apply_model_section(spec, loaded.path)
        if names != (self.session.frame.user_name, self.session.frame.model_name) and not self.chat.generating:
            self.chat.show(self.session.turns)  # the turns under the speakers' names of the framing now in use
        self.chat.show_system()
        self._show_model_status()

    def _apply_model_section(self, spec: str, path) -> None:
        """A model loaded after the first gets its own section of the settings file, where it has one (but never
        over what the command line gave)."""
        from bardterm import config

        settings = self.options.settings
        if settings is None:
            return
        name, section = settings.section_for(*config.model_names(spec, path))
        if self.section is None:  # the first model: its section is in the options already
            self.section = name or ""
            return
        if not name or name == self.section:
            return
        self.section = name
        values = {k: v for k, v in section.items() if k not in self.options.given}
        try:
            self.apply_settings(values)
        except BardtermError as error:
            self.notify(f"{settings.path}: [models.\"{name}\"] {error}", severity="error", timeout=12)
        else:
            self.notify(f"settings for {name} from {settings.path}")

    def apply_settings(self, values: dict) -> None:
        """Settings as the file writes them (decoder, params, max_new_tokens, system, framing, names)."""
        from bardterm.tui.settings import DecoderChoice

        host, session = self.host, self.session
        if "decoder" in values or values.get("params"):
            registry = host.need_registry()
            choice = DecoderChoice.from_name(registry, values.get("decoder") or host.choice.label or
                                             host.choice.selector, host.choice.seed)
            for key, value in values.get("params", {}).items():
                choice.set(registry, key, value)
            host.choice = choice
            self.panel.sync()
            self.show_decoder()
        if "max_new_tokens" in values:
            host.max_new_tokens = values["max_new_tokens"]
        if "user_name" in values or "model_name" in values:
            script = session.script
            session.set_frame(ChatFrame(values.get("user_name", script.user_name),
                                        values.get("model_name", script.model_name), script.template))
        if "framing" in values:
            session.set_framing(values["framing"])
        if "system" in values:
            session.set_system(values["system"])
            self.chat.show_system()

    def _model_failed(self, message: str | None) -> None:
        self.host.loading = None
        self._show_model_status()
        if message:
            self.notify(message, title="model not loaded", severity="error", timeout=15)

    def _show_model_status(self) -> None:
        self.status.show_model(self.host.loaded, self.host.loading, self.session.frame.label)
