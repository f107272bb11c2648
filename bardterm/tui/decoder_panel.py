"""The decoder panel: every registered strategy, each one's parameters rendered from its declared `Param`s.

Every edit is validated inline with `Param.validate`; a valid one changes the host's `DecoderChoice` at once
(and posts `Changed`, for the status line), an invalid one says why under the field and changes nothing.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from bardterm.errors import BardtermError
from bardterm.params import Param, parse_seed
from bardterm.registry import Registry
from bardterm.tui.host import ModelHost
from bardterm.tui.settings import DecoderChoice
from bardterm.tui.wording import for_the_app


class ParamField(Vertical):
    """One parameter: an input (a checkbox for bool, a select for choices) and its inline error."""

    def __init__(self, owner: str, param: Param, value):
        super().__init__(classes="param")
        self.owner, self.param, self.initial = owner, param, value

    def compose(self) -> ComposeResult:
        param = self.param
        yield Label(f"{param.name}  [dim]{param.allowed()}[/]", classes="param-name")
        if param.type is bool:
            yield Checkbox(param.help, value=bool(self.initial), id=f"{self.owner}-{param.name}", compact=True)
        elif param.choices:
            yield Select([(str(c), c) for c in param.choices], value=self.initial, allow_blank=False,
                         id=f"{self.owner}-{param.name}", compact=True)
        else:
            yield Input(str(self.initial), id=f"{self.owner}-{param.name}", tooltip=param.help, compact=True)
        yield Static("", classes="error")

    def set_value(self, value) -> None:
        widget = self.query_one(f"#{self.owner}-{self.param.name}")
        widget.value = value if not isinstance(widget, Input) else str(value)

    def show_error(self, message: str) -> None:
        self.set_class(bool(message), "-invalid")
        self.query_one(".error", Static).update(message)


class DecoderPanel(VerticalScroll):
    class Changed(Message):
        """The decoder setup changed (here, by a preset, or by /set)."""

    def __init__(self, host: ModelHost, **kwargs):
        super().__init__(**kwargs)
        self.host = host
        self.registry: Registry | None = None

    def compose(self) -> ComposeResult:
        yield Static("Decoders are loading…", id="panel-loading")

    @property
    def choice(self) -> DecoderChoice:
        return self.host.choice

    async def populate(self, registry: Registry) -> None:
        """Build the fields for every registered decoder (once the registry has loaded)."""
        self.registry = registry
        await self.remove_children()
        selectors = [n for n, c in registry.decoders.items() if c.kind == "selector"]
        processors = [n for n, c in registry.decoders.items() if c.kind == "processor"]
        widgets = [
            Label("Preset", classes="heading"),
            Select([(f"{n} — {self.say(p.help)}", n) for n, p in registry.presets.items()], prompt="apply a preset…",
                   id="preset", compact=True),
            Label("Selection strategy", classes="heading"),
            Select([(f"{n} — {self.say(registry.decoders[n].help)}", n) for n in selectors], value=self.choice.selector,
                   allow_blank=False, id="selector", compact=True),
        ]
        for name in selectors:
            params = [ParamField(name, p, self.choice.value(registry, name, p.name)) for p in registry.decoders[name].params]
            widgets.append(Vertical(*params, id=f"group-{name}", classes="selector-params"))
        widgets.append(Label("Processor chain (applied top to bottom)", classes="heading"))
        rows = [self._processor_row(name) for name in processors]
        widgets.append(Vertical(*rows, id="chain"))
        widgets += [Label("Seed (blank or -1: random)", classes="heading"),
                    Input("" if self.choice.seed is None else str(self.choice.seed), id="seed", compact=True),
                    Static("", id="seed-error", classes="error"),
                    Label("Setup", classes="heading"), Static("", id="summary")]
        await self.mount_all(widgets)
        self.sync()

    def _processor_row(self, name: str) -> Vertical:
        cls = self.registry.decoders[name]
        fields = [ParamField(name, p, self.choice.value(self.registry, name, p.name)) for p in cls.params]
        plugin = self.registry.plugin_of.get(name, "")
        source = "" if plugin.startswith("bardterm.") else f" [dim]({plugin})[/]"
        head = Horizontal(Checkbox(f"{name}{source}", value=name in self.choice.chain, id=f"use-{name}",
                                   tooltip=self.say(cls.help), compact=True),
                          Button("↑", id=f"up-{name}", compact=True), Button("↓", id=f"down-{name}", compact=True),
                          classes="processor-head")
        return Vertical(head, Vertical(*fields, classes="processor-params"), id=f"row-{name}", classes="processor")

    def say(self, text: str) -> str:
        """Help and errors are shared with the CLI: put their flags the app's way."""
        return for_the_app(text, self.registry.params() if self.registry is not None else ())

    def close_menus(self) -> None:
        """Fold any open drop-down (the panel is being hidden)."""
        for select in self.query(Select):
            select.expanded = False

    def sync(self) -> None:
        """Show the app's current choice: values, which groups are visible, the chain's order."""
        if self.registry is None:
            return
        choice, registry = self.choice, self.registry
        self.query_one("#selector", Select).value = choice.selector
        for group in self.query(".selector-params"):
            group.display = group.id == f"group-{choice.selector}"
        for field in self.query(ParamField):
            field.set_value(choice.value(registry, field.owner, field.param.name))
            field.show_error("")
        chain = self.query_one("#chain", Vertical)
        order = choice.chain + [n for n, c in registry.decoders.items() if c.kind == "processor" and n not in choice.chain]
        for index, name in enumerate(order):
            row = chain.query_one(f"#row-{name}")
            self.query_one(f"#use-{name}", Checkbox).value = name in choice.chain
            row.query_one(".processor-params").display = name in choice.chain
            if index < len(chain.children) and chain.children[index] is not row:
                chain.move_child(row, before=index)
        self.query_one("#seed", Input).value = "" if choice.seed is None else str(choice.seed)
        self._summarise()

    def _summarise(self) -> None:
        self.query_one("#summary", Static).update(self.choice.describe(self.registry))
        self.post_message(self.Changed())

    def use(self, name: str) -> None:
        """Start again from a preset or decoder, keeping the seed; raises BardtermError for an unknown name."""
        self.host.choice = DecoderChoice.from_name(self.host.need_registry(), name, self.choice.seed)
        self.sync()
        self.notify(f"decoder: {self.choice.describe(self.registry)}")

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if self.registry is None or event.value == Select.BLANK:
            return
        if event.select.id == "preset":
            try:
                self.use(event.value)
            except BardtermError as error:
                self.notify(str(error), severity="error")
        elif event.select.id == "selector":
            if event.value != self.choice.selector:
                self.choice.selector = event.value
                self.sync()
        else:
            self._edit(event.select.parent, event.value)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.registry is None:
            return
        if event.input.id == "seed":
            self._edit_seed(event.value)
        elif isinstance(event.input.parent, ParamField):
            self._edit(event.input.parent, event.value)

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        checkbox = event.checkbox
        if self.registry is None:
            return
        if checkbox.id and checkbox.id.startswith("use-"):
            name = checkbox.id[len("use-"):]
            if event.value == (name in self.choice.chain):
                return
            if event.value:
                self.choice.add(self.registry, name)
            else:
                self.choice.remove(name)
            self.sync()
        elif isinstance(checkbox.parent, ParamField):
            self._edit(checkbox.parent, event.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        direction, _, name = (event.button.id or "").partition("-")
        if name not in self.choice.chain:
            self.notify(f"{name} is not in the chain: tick it first", severity="warning")
            return
        self.choice.move(name, -1 if direction == "up" else +1)
        self.sync()

    def _edit(self, field: ParamField, raw) -> None:
        try:
            value = field.param.validate(raw, owner=field.owner)
        except BardtermError as error:
            field.show_error(self.say(str(error)))
            return
        field.show_error("")
        if self.choice.value(self.registry, field.owner, field.param.name) != value:
            self.choice.values.setdefault(field.owner, {})[field.param.name] = value
            self._summarise()

    def _edit_seed(self, raw: str) -> None:
        error = self.query_one("#seed-error", Static)
        try:
            seed = parse_seed(raw)
        except BardtermError as problem:
            error.update(self.say(str(problem)))
            return
        error.update("")
        if seed != self.choice.seed:
            self.choice.seed = seed
            self._summarise()
