"""Training settings are declared once (bardterm/training/settings.py): the flags, their help and defaults, the
recipe keys, conversion and range checks all come from the declaration, so a flag and a recipe key agree."""

from __future__ import annotations

import pytest

from bardterm.errors import BardtermError


def config(argv: list[str], recipe: str | None = None, tmp_path=None) -> dict:
    from bardterm.cli import build_parser
    from bardterm.training.cli import config_from_args

    if recipe is not None:
        path = tmp_path / "recipe.toml"
        path.write_text(recipe)
        argv = [*argv, "--recipe", str(path)]
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_every_setting_is_a_flag_with_its_declared_default_and_a_recipe_key(capsys):
    from bardterm.cli import main
    from bardterm.training.recipes import DEFAULTS
    from bardterm.training.settings import SETTINGS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for setting in SETTINGS:
        assert setting.flag in help_text, setting.name
        assert DEFAULTS[setting.name] == setting.default
    assert "--warmup-steps N linear warmup steps before cosine decay (default 100)" in help_text
    assert "--lora R train a LoRA adapter" in help_text and "(default 2 x R)" in help_text


@pytest.mark.parametrize("flag, key, value", [
    ("--tie-weights", "tie_weights", "off"), ("--merge", "merge", "on"),
])
def test_a_boolean_reads_the_same_as_a_flag_and_as_a_recipe_key(tmp_path, flag, key, value):
    expected = value == "on"
    base = ["--base", "scratch"] if key == "tie_weights" else ["--base", "x", "--lora", "2"]
    from_flag = config([*base, flag if expected else "--no-" + flag[2:]])
    from_recipe = config(base, f'{key} = "{value}"\n', tmp_path)
    from_toml_bool = config(base, f"{key} = {str(expected).lower()}\n", tmp_path)
    assert from_flag[key] is from_recipe[key] is from_toml_bool[key] is expected


@pytest.mark.parametrize("key, bad, message", [
    ("batch_size", "0", "invalid --batch-size 0: must be an integer >= 1"),
    ("lr", "-1", "invalid --lr -1: must be a number > 0 and < 10"),
    ("optimizer", "sgd", "invalid --optimizer sgd: must be one of adamw, lion, muon"),
    ("dropout", "many", "invalid --dropout many: must be a number >= 0 and < 1"),
])
def test_a_bad_value_is_refused_with_the_same_line_from_a_flag_or_a_recipe(tmp_path, key, bad, message):
    with pytest.raises(BardtermError) as from_flag:
        config(["--" + key.replace("_", "-"), bad])
    with pytest.raises(BardtermError) as from_recipe:
        config([], f'{key} = "{bad}"\n', tmp_path)
    assert str(from_flag.value) == str(from_recipe.value) == message


@pytest.mark.parametrize("kind", ["DEEPSPEED", "MEGATRON_LM"])
def test_a_deepspeed_or_megatron_launch_is_refused_in_one_line(kind):
    from accelerate.utils import DistributedType

    from bardterm.training.processes import refuse_sharding

    for supported in ("MULTI_GPU", "MULTI_CPU", "FSDP"):  # data-parallel, and FSDP (tests/test_train_fsdp.py)
        refuse_sharding(DistributedType[supported])
    with pytest.raises(BardtermError, match=f"does not support {kind}") as refused:
        refuse_sharding(DistributedType[kind])
    assert "\n" not in str(refused.value) and "distributed_type: FSDP" in str(refused.value)
