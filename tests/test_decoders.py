"""The built-in decoders, their declared parameters, and `build`: names and settings to a validated setup."""

import pytest
import torch

from bardterm.decoders.base import Processor, Selector
from bardterm.params import InvalidParameter, Param
from bardterm.registry import build, get_registry

BUILTINS = {"greedy": "selector", "sample": "selector", "beam": "selector", "temperature": "processor",
            "top_k": "processor", "top_p": "processor", "repetition_penalty": "processor",
            "no_repeat_ngram": "processor"}


def test_the_builtins_register_through_the_plugin_hooks():
    registry = get_registry()
    for name, kind in BUILTINS.items():
        assert registry.decoders[name].kind == kind
        assert registry.plugin_of[name] == f"bardterm.decoders.{name}"
        assert registry.decoders[name].help
    assert {"focused", "nucleus", "creative"} <= set(registry.presets)


def test_every_parameter_is_declared_with_help_and_a_valid_default():
    for name, cls in get_registry().decoders.items():
        for param in cls.params:
            assert param.help and param.validate(param.default) == param.default, (name, param.name)


def test_default_chain_order_is_penalty_temperature_top_k_top_p():
    setup = build("sample", top_p=0.9, temperature=0.8, repetition_penalty=1.1, top_k=20)
    assert [p.name for p in setup.chain] == ["repetition_penalty", "temperature", "top_k", "top_p"]
    assert setup.selector.name == "sample"


@pytest.mark.parametrize("selector, defaults", [
    ("greedy", [("repetition_penalty", {"repetition_penalty": 1.2})]),
    ("beam", [("repetition_penalty", {"repetition_penalty": 1.2}), ("no_repeat_ngram", {"no_repeat_ngram_size": 6})]),
])
def test_greedy_and_beam_bring_anti_loop_defaults_that_flags_and_chains_override(selector, defaults):
    assert [(p.name, p.settings()) for p in build(selector).chain] == defaults
    assert build(selector, repetition_penalty=1.0).chain[0].repetition_penalty == 1.0
    assert build(selector, chain=[]).chain == []  # an explicit chain without them: the plain algorithm
    assert [p.name for p in build(selector, chain=["top_k"], top_k=5).chain] == ["top_k"]
    assert [p.name for p in build(selector, top_k=5).chain] == [name for name, _ in defaults] + ["top_k"]
    assert build("sample").chain == []  # selectors without defaults are unchanged


def test_no_repeat_ngram_rules_out_the_token_that_would_repeat_a_run():
    processor = build("sample", no_repeat_ngram_size=3).chain[0]
    scores = torch.zeros(1, 6)
    out = processor(torch.tensor([[1, 2, 3, 4, 1, 2]]), scores)  # "1 2" was followed by 3 once: 3 is ruled out
    assert torch.isinf(out[0]).tolist() == [False, False, False, True, False, False]
    assert processor(torch.tensor([[1, 2, 3, 4, 5, 1]]), scores).isfinite().all()  # no run of 2 repeats yet
    off = build("sample", no_repeat_ngram_size=0).chain[0]
    assert off(torch.tensor([[1, 2, 3, 4, 1, 2]]), scores) is scores  # 0 turns it off


def test_an_explicit_chain_sets_the_order():
    setup = build("sample", chain=["top_p", "temperature"], top_p=0.9, temperature=0.8)
    assert [p.name for p in setup.chain] == ["top_p", "temperature"]
    assert setup.describe() == "top_p=0.9 → temperature=0.8 → sample"


def test_a_preset_gives_its_settings_and_flags_win():
    setup = build("creative", top_p=0.8)
    values = {p.name: p.settings() for p in setup.chain}
    assert values["top_p"] == {"top_p": 0.8}
    assert values["temperature"] == {"temperature": 0.9}
    assert setup.selector.name == "sample"


def test_a_processor_named_as_the_decoder_samples_through_it():
    setup = build("top_k", top_k=5)
    assert setup.selector.name == "sample" and [p.settings() for p in setup.chain] == [{"top_k": 5}]


def test_beam_parameters_reach_the_selector():
    setup = build("beam", num_beams=6, length_penalty=0.5, early_stopping="true")
    assert setup.selector.settings() == {"num_beams": 6, "length_penalty": 0.5, "early_stopping": True}
    assert setup.describe() == ("repetition_penalty=1.2 → no_repeat_ngram(no_repeat_ngram_size=6) → "
                                "beam(num_beams=6, length_penalty=0.5, early_stopping=True)")


@pytest.mark.parametrize("settings, fragments", [
    ({"temperature": 0}, ["temperature=0", "> 0", "--decoder greedy"]),
    ({"temperature": "hot"}, ["temperature", "hot", "a number"]),
    ({"top_k": 0}, ["top_k=0", ">= 1"]),
    ({"top_k": 2.5}, ["top_k=2.5", "an integer"]),
    ({"top_p": 1.5}, ["top_p=1.5", "<= 1"]),
    ({"top_p": float("nan")}, ["top_p=nan"]),
    ({"repetition_penalty": -1}, ["repetition_penalty=-1", "> 0"]),
    ({"no_repeat_ngram_size": -1}, ["no_repeat_ngram_size=-1", ">= 0"]),
])
def test_invalid_values_say_which_parameter_the_value_and_what_is_allowed(settings, fragments):
    with pytest.raises(InvalidParameter) as caught:
        build("sample", **settings)
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.parametrize("decoder, settings, fragment", [
    ("beam", {"num_beams": 1}, "num_beams=1"),
    ("beam", {"num_beams": 65}, "<= 64"),
    ("beam", {"early_stopping": "maybe"}, "true or false"),
    ("greedy", {"num_beams": 4}, "num_beams belongs to selector 'beam'"),
    ("sample", {"top_kk": 3}, "unknown parameter 'top_kk'"),
    ("sample", {"beam.temperature": 3}, "unknown parameter"),
])
def test_misplaced_or_unknown_parameters_are_refused(decoder, settings, fragment):
    with pytest.raises(InvalidParameter, match=fragment):
        build(decoder, **settings)


def test_an_unknown_decoder_lists_the_known_ones():
    with pytest.raises(Exception, match="unknown decoder 'gredy'.*greedy"):
        build("gredy")


def test_a_chain_entry_that_is_not_a_processor_is_refused():
    with pytest.raises(Exception, match="'beam' is not a processor"):
        build("sample", chain=["beam"])


@pytest.mark.parametrize("value, expected", [("3", 3), ("3.0", 3), (4, 4)])
def test_integers_arrive_as_text_from_the_command_line(value, expected):
    assert Param("n", int, 1, "n", min=1).validate(value) == expected


def test_a_bool_is_not_a_number():
    with pytest.raises(InvalidParameter):
        Param("n", int, 1, "n").validate(True)


def scores_for(values):
    return torch.tensor([values], dtype=torch.float32)


def test_greedy_picks_the_highest_score():
    assert build("greedy").selector.choose(scores_for([0.1, 2.0, -1.0, 1.9]), torch.Generator()).tolist() == [1]


def test_temperature_divides_the_logits():
    processor = build("sample", temperature=0.5).chain[0]
    assert processor(None, scores_for([1.0, -2.0, 0.0])).tolist() == [[2.0, -4.0, 0.0]]


def test_top_k_keeps_the_k_best():
    processor = build("sample", top_k=2).chain[0]
    out = processor(None, scores_for([0.1, 3.0, 2.0, -1.0]))[0]
    assert torch.isfinite(out).tolist() == [False, True, True, False]


def test_top_p_keeps_the_smallest_set_holding_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    processor = build("sample", top_p=0.75).chain[0]
    out = processor(None, probs.log()[None])[0]
    assert torch.isfinite(out).tolist() == [True, True, False, False]


def test_repetition_penalty_lowers_seen_tokens_either_sign():
    processor = build("sample", repetition_penalty=2.0).chain[0]
    out = processor(torch.tensor([[0, 1]]), scores_for([4.0, -4.0, 4.0]))
    assert out.tolist() == [[2.0, -8.0, 4.0]]


def test_sampling_draws_from_the_generator_it_is_given():
    selector = build("sample").selector
    scores = torch.zeros(1, 1000)
    first = [int(selector.choose(scores, torch.Generator().manual_seed(5))) for _ in range(3)]
    assert len(set(first)) == 1  # the same seed, the same draw
    assert int(selector.choose(scores, torch.Generator().manual_seed(6))) != first[0]


def test_decoder_classes_are_processors_or_selectors():
    for cls in get_registry().decoders.values():
        assert issubclass(cls, (Processor, Selector))
