"""The reference token ids for contrastive search, from transformers 4.x's own implementation.

transformers 5 no longer ships contrastive search (4.56 moved it to a Hub repository), so the expected ids in
tests/test_contrastive.py were worked out once, with this script, in a separate environment:

    python3 -m venv /tmp/tf4venv
    /tmp/tf4venv/bin/pip install torch==2.13.0 transformers==4.55.4
    /tmp/tf4venv/bin/python tests/reference/contrastive_reference.py

It prints the weights' checksum and the ids of `model.generate(penalty_alpha=..., top_k=...)` for each case;
they are pasted into the test, which builds the same model with `build_model` (imported from this file) under
transformers 5 and checks both. The model's weights come from a seeded `torch.Generator`, not from
transformers' initialisation, so both versions build the same model.
"""

from __future__ import annotations

import torch

VOCAB, EOS = 96, 0
PROMPTS = ([[5, 17, 33, 8, 61]], [[42]], [[3, 3, 3, 9, 27, 81, 14]])
CASES = (  # (prompt index, top_k, penalty_alpha, repetition_penalty, max_new_tokens)
    (0, 4, 0.6, 1.0, 24),
    (1, 3, 0.3, 1.0, 24),
    (2, 6, 0.9, 1.0, 24),
    (0, 5, 0.5, 1.3, 24),
)


def build_model():
    """A two-layer GPT-2 whose every weight is drawn from `torch.Generator().manual_seed(2022)`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=EOS,
                        eos_token_id=EOS, pad_token_id=EOS, attn_implementation="eager")
    model = GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(2022)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):  # lm_head shares wte's weight: listed once
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1.0 + 0.1 * noise if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
                            else 0.5 * noise)
    return model


def checksum(model) -> float:
    return round(sum(float(p.detach().double().abs().sum()) for _, p in sorted(model.named_parameters())), 6)


def main() -> None:
    import transformers

    model = build_model()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"CHECKSUM = {checksum(model)}")
    print("EXPECTED = {")
    for case in CASES:
        prompt, top_k, alpha, penalty, new = case
        ids = torch.tensor(PROMPTS[prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), penalty_alpha=alpha, top_k=top_k,
                             repetition_penalty=penalty, max_new_tokens=new, do_sample=False)
        print(f"    {case}: {out[0, ids.shape[1]:].tolist()},")
    print("}")


if __name__ == "__main__":
    main()
