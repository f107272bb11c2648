"""Output held to a grammar, a bardterm plugin: a JSON schema or a regular expression, with llguidance.

    bardterm generate 'Romeo, as JSON:' --decoder grammar --json-schema @person.json

Each step the processor asks llguidance (github.com/guidance-ai/llguidance) which tokens can continue the
text so that it still matches, and rules out every other token: whatever the sampler then picks keeps the
output valid, and once it is complete only the end-of-text token is left. llguidance reads the Hugging Face
tokenizer (byte-level BPE included) as it is, installs as one small wheel, and has a JSON schema ready in
about 1 ms and each step's mask in 30-100 microseconds on a CPU (4096-token vocabulary); README.md compares it
with xgrammar and outlines-core. JSON is kept compact (no whitespace between items), which a small model
cannot pad out forever.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bardterm import BardtermError, InvalidParameter, Param, Processor, hookimpl

bardterm_api = 2  # the plugin API this was written for; bardterm refuses versions it does not support


class Grammar(Processor):
    name = "grammar"
    help = "Hold the output to a JSON schema or a regular expression (llguidance): invalid tokens are ruled out."
    order = 1  # first: the samplers after it choose among the tokens the grammar allows
    params = (
        Param("json_schema", str, "", "A JSON schema the output must match: the JSON itself, or @FILE.",
              check=lambda text: text and json_grammar(text)),
        Param("regex", str, "", "A regular expression the whole output must match.",
              check=lambda text: text and regex_grammar(text)),
    )

    def __init__(self, **values):
        super().__init__(**values)
        self.grammar = compile_grammar(self.json_schema, self.regex)  # refused here, before any token
        self._tokenizer = self._llguidance_tokenizer = None

    def start_run(self, run):
        import llguidance

        if run.tokenizer is not self._tokenizer:  # ~20 ms for 4096 tokens, ~1 s for 50k: once per tokenizer
            self._llguidance_tokenizer = llguidance_tokenizer(run.tokenizer)
            self._tokenizer = run.tokenizer
        self.matcher = llguidance.LLMatcher(self._llguidance_tokenizer, self.grammar)
        if self.matcher.is_error():
            raise InvalidParameter(f"grammar: {self.matcher.get_error()}")
        self.prompt_length = run.prompt_ids.shape[1]
        self.consumed: list[int] = []

    def __call__(self, input_ids, scores):
        if input_ids.shape[0] != 1:
            raise BardtermError("grammar holds one text at a time: use it with greedy or sample, not beam search")
        self._catch_up(input_ids[0, self.prompt_length:].tolist())
        allowed = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8) > 0
        mask = torch.zeros(scores.shape[-1], dtype=torch.bool)
        size = min(len(allowed), len(mask))
        mask[:size] = allowed[:size]  # tokens the tokenizer does not know (a padded vocabulary) are never allowed
        return scores.masked_fill(~mask.to(scores.device), -float("inf"))

    def _catch_up(self, generated: list[int]) -> None:
        """Feed the matcher the tokens chosen since the last step (from scratch if the text is another one)."""
        if generated[:len(self.consumed)] != self.consumed:
            self.matcher.reset()
            self.consumed = []
        new = generated[len(self.consumed):]
        if new and not self.matcher.consume_tokens(new):
            raise BardtermError(f"grammar: the text left the grammar ({self.matcher.get_error()})")
        self.consumed = generated


def llguidance_tokenizer(tokenizer):
    """llguidance's view of a tokenizer backed by the `tokenizers` library: transformers' fast tokenizers and
    bardterm's own both have one as `backend_tokenizer`. What `llguidance.hf.from_tokenizer` does, without its
    check for transformers' class (which imports transformers, slow, and refuses bardterm's tokenizer)."""
    import copy

    import llguidance

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise BardtermError("grammar needs a tokenizer with a tokenizer.json (a fast tokenizer): this model's has none")
    backend = copy.copy(backend)
    backend.no_padding()
    backend.no_truncation()
    return llguidance.LLTokenizer(backend.to_str(), eos_token=tokenizer.eos_token_id)


def compile_grammar(json_schema: str, regex: str) -> str:
    """llguidance's grammar for exactly one of a JSON schema (text, or @FILE) and a regular expression."""
    if bool(json_schema) == bool(regex):
        raise InvalidParameter("grammar needs exactly one of json_schema and regex, e.g. --json-schema "
                               "'{\"type\": \"object\"}' or --regex '[0-9]+'")
    return json_grammar(json_schema) if json_schema else regex_grammar(regex)


def json_grammar(text: str) -> str:
    import llguidance

    schema = _read_schema(text)
    return _checked(llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False}),
                    "json_schema")


def regex_grammar(regex: str) -> str:
    import llguidance

    return _checked(llguidance.LLMatcher.grammar_from_regex(regex), f"regex {regex!r}")


def _checked(grammar: str, what: str) -> str:
    import llguidance

    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem:
        raise InvalidParameter(f"invalid {what}: {' '.join(problem.split())}")
    return grammar


def _read_schema(text: str) -> dict:
    source = text
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as error:
            raise InvalidParameter(f"json_schema {source}: cannot read it ({error.strerror})") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as error:
        problem = f"{error.msg} at character {error.pos}"
        raise InvalidParameter(f"json_schema {source[:40]!r} is not JSON: {problem}") from None
    if not isinstance(schema, dict):
        raise InvalidParameter("json_schema must be a JSON object, e.g. {\"type\": \"object\"}")
    return schema


@hookimpl
def register_decoders(register):
    register(Grammar)


@hookimpl
def register_presets(register):
    register("json", "Sampling held to a JSON object (any keys): the grammar with the schema {\"type\": \"object\"}.",
             decoder="sample", json_schema='{"type": "object"}')
