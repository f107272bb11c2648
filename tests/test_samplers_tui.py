"""The new samplers in the app's decoder panel (F2): shown as the other processors are, checked as you type."""

from __future__ import annotations

from test_samplers_cli import NEW_SAMPLERS
from test_tui_app import home, make_app, messages, ready, reply, stored  # noqa: F401 (the app tests' fixtures, helpers)


async def test_the_panel_shows_every_new_sampler_and_refuses_a_bad_bias_inline(make_app, home):
    app = make_app(decoder="greedy")
    async with app.run_test(size=(120, 50)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        panel = app.panel
        for name, flags in NEW_SAMPLERS.items():
            assert panel.query(f"#row-{name}"), f"no row for {name}"
            for flag in flags:
                assert panel.query(f"#{name}-{flag[2:].replace('-', '_')}"), f"no field for {name} {flag}"

        panel.query_one("#use-logit_bias").value = True
        await pilot.pause()
        panel.query_one("#use-dry").value = True
        await pilot.pause()
        await pilot.pause()  # the panel shows the ticked processors' fields before one is typed in
        assert app.host.choice.chain == ["logit_bias", "repetition_penalty", "dry"]
        bias = panel.query_one("#logit_bias-logit_bias")
        bias.value = "Romeo"  # no =BIAS: refused under the field, the setup unchanged
        await pilot.pause()
        shown = str(bias.parent.query_one(".error").render())
        assert "expected KEY=BIAS" in " ".join(shown.split()), shown
        assert app.host.choice.values.get("logit_bias", {}).get("logit_bias", "") == ""
        bias.value = " Romeo=30"
        await pilot.pause()
        assert not bias.parent.has_class("-invalid")
        assert app.host.choice.values["logit_bias"]["logit_bias"] == " Romeo=30"

        await pilot.press("f2")  # closed: typing goes to the message box, and the reply uses the setup
        await reply(pilot, "Good morrow")
        assert not [m for m in messages(app) if "error" in m.lower() or "invalid" in m.lower()], messages(app)
        speaker, text, partial = stored(home)[0][-1]
        assert speaker == "model" and not partial
        # The random model never says it unbiased; with +30 " Romeo" is its likeliest token again and again, DRY
        # breaking each run of it after 9 or 10.
        words = text.split()
        assert words.count("Romeo") >= 10 and words[:9] == ["Romeo"] * 9 and words != ["Romeo"] * len(words)
