"""What a request's output must match, and the llguidance grammar it compiles from.

Five kinds, as vLLM names them: any JSON object, a JSON schema, a regular expression, one of
several strings, or a Lark grammar (llguidance's dialect, which can embed JSON schemas with
`%json {...}`). JSON output is laid out as `json.dumps` lays it out by default: one space after
':' and ',' and no other whitespace. Fixed rather than "any whitespace", because a model that may
put whitespace anywhere can spend its whole budget on it (small and random-weight models do), and
the output parses to the same value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from llguidance import LLMatcher

__all__ = ["JSON_LAYOUT", "StructuredKind", "StructuredOutput"]

StructuredKind = Literal["json_object", "json_schema", "regex", "choice", "grammar"]

# llguidance's JSON options for that layout; a Lark grammar's `%json` schema takes them as its
# "x-guidance" entry.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class StructuredOutput:
    """A request's output grammar. Frozen and hashable: equal specs share one compiled grammar.

    Build with the class methods; a malformed definition raises ValueError naming the problem
    (whether a schema or regex is valid is checked when it is compiled).
    """

    kind: StructuredKind
    # json_schema: the schema as JSON text; regex: the pattern; choice: the strings as a JSON
    # list; grammar: Lark text; json_object: empty.
    definition: str = ""

    def __post_init__(self) -> None:
        if self.kind not in get_args(StructuredKind):
            raise ValueError(f"structured output kind must be one of {get_args(StructuredKind)}, got {self.kind!r}")
        if not isinstance(self.definition, str):
            raise ValueError(f"structured output definition must be a string, got {type(self.definition).__name__}")
        if self.kind != "json_object" and not self.definition:
            raise ValueError(f"a {self.kind} structured output needs a definition")

    @classmethod
    def json_object(cls) -> StructuredOutput:
        return cls("json_object")

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> StructuredOutput:
        if schema is False:
            raise ValueError("the schema false matches no output")
        if not isinstance(schema, (dict, bool)):
            raise ValueError(f"a JSON schema must be an object or a boolean, got {type(schema).__name__}")
        return cls("json_schema", json.dumps({} if schema is True else schema))

    @classmethod
    def regex(cls, pattern: str) -> StructuredOutput:
        return cls("regex", pattern)

    @classmethod
    def choice(cls, options: list[str]) -> StructuredOutput:
        if not options or not all(isinstance(option, str) and option for option in options):
            raise ValueError(f"choice must be a non-empty list of non-empty strings, got {options!r}")
        return cls("choice", json.dumps(options))

    @classmethod
    def grammar(cls, lark: str) -> StructuredOutput:
        return cls("grammar", lark)

    def llguidance_grammar(self) -> str:
        """The grammar in llguidance's serialized form (not yet checked: compiling checks it)."""
        if self.kind == "json_object":
            return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_LAYOUT)
        if self.kind == "json_schema":
            return LLMatcher.grammar_from_json_schema(self.definition, defaults=JSON_LAYOUT)
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.definition)
        if self.kind == "choice":
            alternatives = " | ".join(json.dumps(option, ensure_ascii=False) for option in json.loads(self.definition))
            return LLMatcher.grammar_from_lark(f"start: {alternatives}")
        return LLMatcher.grammar_from_lark(self.definition)
