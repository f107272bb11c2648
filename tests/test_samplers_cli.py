"""The built-in samplers as a user meets them: listed by `bardterm decoders`, set by flags on `generate`."""

from __future__ import annotations

import json

from test_cli import assert_one_line_error, run

NEW_SAMPLERS = {
    "min_p": ["--min-p", "--min-tokens-to-keep"],
    "typical": ["--typical-p"],
    "epsilon": ["--epsilon-cutoff"],
    "eta": ["--eta-cutoff"],
    "top_n_sigma": ["--top-n-sigma"],
    "xtc": ["--xtc-probability", "--xtc-threshold"],
    "dry": ["--dry-multiplier", "--dry-base", "--dry-allowed-length", "--dry-penalty-last-n",
            "--dry-sequence-breakers"],
    "logit_bias": ["--logit-bias"],
}


def test_bardterm_decoders_lists_every_sampler_with_its_parameters(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: no flag is wrapped
    code, out, _ = run(capsys, "decoders")
    assert code == 0
    for name, flags in NEW_SAMPLERS.items():
        assert name in out
        for flag in flags:
            assert flag in out, f"{flag} of {name} is not listed"


def test_every_sampler_in_one_chain_from_flags(capsys, tiny_checkpoint):
    code, out, err = run(capsys, "generate", "ROMEO:", "--checkpoint", str(tiny_checkpoint), "--seed", "3",
                         "--max-new-tokens", "12", "--json", "--logit-bias", " Romeo=-5, 7=-inf",
                         "--dry-multiplier", "1.5", "--top-n-sigma", "2", "--typical-p", "0.95", "--min-p", "0.02",
                         "--epsilon-cutoff", "1e-4", "--eta-cutoff", "1e-3", "--xtc-probability", "0.5")
    assert code == 0, err
    result = json.loads(out)
    chain = result["decoder"]
    for name in ("logit_bias", "dry", "top_n_sigma", "typical", "min_p", "epsilon", "eta", "xtc"):
        assert name in chain
    assert chain.index("logit_bias") < chain.index("dry") < chain.index("top_n_sigma") < chain.index("xtc")
    assert 7 not in result["token_ids"]


def test_a_bad_logit_bias_or_breaker_list_is_one_line_before_the_model_loads(capsys, tmp_path):
    missing = str(tmp_path / "no-model")  # never reached: the setup is refused first
    code, _, err = run(capsys, "generate", "x", "--checkpoint", missing, "--logit-bias", "Romeo")
    assert_one_line_error(code, err, "logit_bias", "KEY=BIAS")
    code, _, err = run(capsys, "generate", "x", "--checkpoint", missing, "--dry-sequence-breakers", "\\n")
    assert_one_line_error(code, err, "dry_sequence_breakers", "JSON strings")
