"""The YAML side of the config: line numbers of keys, `--set` overrides and one-line problem messages.

Pure functions over PyYAML's node tree and pydantic's error dicts; schema.py owns the schema and
config/__init__.py the order of checks.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import yaml

from finetune.config import axolotl_keys
from finetune.errors import UserError


class ConfigError(UserError):
    """Every problem in a config file, one line each, prefixed by file and line."""


def line_map(node, path=(), out=None) -> dict[tuple, int]:
    """Key path -> 1-based line number, from PyYAML's composed node tree."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            out[child] = key_node.start_mark.line + 1
            line_map(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            line_map(item, (*path, i), out)
    return out


def parse_override_path(dotted: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in re.split(r"\.|\[(\d+)\]", dotted):
        if piece:
            parts.append(int(piece) if piece.isdigit() else piece)
    return parts


def apply_override(raw: dict, assignment: str) -> None:
    """`--set key.sub[0].x=value`: the value is parsed as YAML (so `true`, `3`, `[a, b]` work)."""
    if "=" not in assignment:
        raise ConfigError([f"--set {assignment}: expected key=value"])
    dotted, _, text = assignment.partition("=")
    keys = parse_override_path(dotted.strip())
    if not keys:
        raise ConfigError([f"--set {assignment}: empty key"])
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    target: Any = raw
    for depth, key in enumerate(keys[:-1]):
        nxt = keys[depth + 1]
        if isinstance(key, int):
            if not isinstance(target, list) or key >= len(target):
                raise ConfigError([f"--set {dotted}: index {key} is out of range"])
        elif not isinstance(target, dict):
            raise ConfigError([f"--set {dotted}: {key} is not inside a mapping"])
        elif target.get(key) is None:
            target[key] = [] if isinstance(nxt, int) else {}
        target = target[key]
    last = keys[-1]
    if isinstance(last, int):
        if not isinstance(target, list) or last > len(target):
            raise ConfigError([f"--set {dotted}: index {last} is out of range"])
        if last == len(target):
            target.append(value)
        else:
            target[last] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise ConfigError([f"--set {dotted}: {last} is not inside a mapping"])


def format_loc(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


TYPE_TAGS = re.compile(
    r"^(str|pref|kto|int|float|bool|dict|list\[.*\]|dict\[.*\]|literal\[.*\]|function-.*|tagged-union\[.*\]|constrained-.*)$"
)


def friendly(err: dict, secret: bool) -> str:
    kind, msg, value = err["type"], err["msg"], err.get("input")
    got = "" if secret or isinstance(value, dict | list) else f" (got {value!r})"
    if kind == "missing":
        return "required key is missing"
    if kind.startswith("int_"):
        return f"expected an integer{got}"
    if kind.startswith("float_"):
        return f"expected a number{got}"
    if kind.startswith("bool_"):
        return f"expected true or false{got}"
    if kind == "string_type":
        return f"expected a string{got}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list{got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping{got}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "too_short":
        return "must not be empty"
    msg = msg.replace("Input should be", "must be")
    return f"{msg}{got}"


def unknown_key(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known | set(axolotl_keys.UNSUPPORTED)), n=1, cutoff=0.75)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


def drop_nulls(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    return {k: drop_nulls(v) for k, v in entry.items() if v is not None}


def line_of(problem: str) -> int:
    """Sort key: problems in file order; --set and file-level problems last."""
    match = re.match(r"^.*?:(\d+): ", problem)
    return int(match.group(1)) if match else 1 << 30


# ---------------------------------------------------------------- YAML syntax errors

# PyYAML's problem_mark is where it gave up, often the line after the mistake; for a construct left open (a
# quote, a bracket, a key without ':') its context_mark is where that construct started: the line to fix.
_LEFT_OPEN = {
    "while scanning a quoted scalar": "a quote opened here is not closed",
    "while scanning a simple key": "a key without ':' here",
    "while parsing a flow": "a [ or { opened here is not closed",
}


def yaml_error(exc: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    """(1-based line of the mistake or None, what is wrong) for a YAML syntax error in `text`."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, opened = getattr(exc, "context", None) or "", getattr(exc, "context_mark", None)
    for start, what in _LEFT_OPEN.items():
        if opened is not None and context.startswith(start):
            return opened.line + 1, f"{what} ({problem})"
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return None, problem
    quote = _quote_closed_late(text, mark)
    if quote is not None:  # `a: "x` with another quote further down: that one closed it
        return quote.line + 1, f"a quote opened here closes only on line {mark.line + 1} ({problem})"
    return mark.line + 1, problem


def _quote_closed_late(text: str, mark):
    """Start of a quoted value spanning several lines that ends right where parsing failed, else None: an
    unclosed quote runs on to the next quote character, and the parser fails just after it."""
    previous = None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if token.start_mark.index >= mark.index:
                break
            previous = token
    except yaml.YAMLError:
        pass
    if (
        isinstance(previous, yaml.ScalarToken)
        and previous.style in ('"', "'")
        and previous.start_mark.line < previous.end_mark.line == mark.line
    ):
        return previous.start_mark
    return None
