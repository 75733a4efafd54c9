"""A small subset of Go's text/template, enough to render Ollama TEMPLATEs as Ollama would (for tests).

Supported: text, `{{ .Prompt }}` / `.System` / `.Role` / `.Content`, string literals (`{{ "{{" }}`),
`{{ if .X }}`, `{{ if eq .Role "assistant" }}`, `{{ else }}`, `{{ range .Messages }}`, `{{ end }}`, and the
`{{-` / `-}}` whitespace trimming. Anything else raises, so a template using more is not silently misread.
"""

from __future__ import annotations

import re

_ACTION = re.compile(r"(\{\{-?\s.*?\s-?\}\}|\{\{-?\S.*?\}\})", re.S)


def _tokens(template: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for piece in _ACTION.split(template):
        if not piece:
            continue
        if _ACTION.fullmatch(piece):
            if piece.startswith("{{-") and out and out[-1][0] == "text":
                out[-1] = ("text", out[-1][1].rstrip())
            body = piece[2:-2]
            trim_right = body.endswith("-") and body[-2:-1].isspace()
            body = (
                body.removeprefix("-").removesuffix("-").strip()
                if trim_right
                else body.removeprefix("-").strip()
            )
            out.append(("action", body))
            if trim_right:
                out.append(("trim", ""))
        else:
            if out and out[-1][0] == "trim":
                out.pop()
                piece = piece.lstrip()
            out.append(("text", piece))
    return [t for t in out if t[0] != "trim"]


def _parse(tokens: list, i: int, stop: tuple[str, ...]) -> tuple[list, int, str | None]:
    nodes: list = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
        elif value in stop:
            return nodes, i, value
        elif value.startswith("if "):
            then, i, ended = _parse(tokens, i, ("else", "end"))
            other: list = []
            if ended == "else":
                other, i, _ = _parse(tokens, i, ("end",))
            nodes.append(("if", value[3:].strip(), then, other))
        elif value.startswith("range "):
            body, i, _ = _parse(tokens, i, ("end",))
            nodes.append(("range", value[6:].strip(), body))
        elif re.fullmatch(r'"[^"]*"', value):
            nodes.append(("text", value[1:-1]))
        elif re.fullmatch(r"\.\w+", value):
            nodes.append(("var", value[1:]))
        else:
            raise ValueError(f"unsupported action {{{{ {value} }}}}")
    return nodes, i, None


def _test(cond: str, scope: dict) -> bool:
    if m := re.fullmatch(r'eq \.(\w+) "([^"]*)"', cond):
        return scope.get(m.group(1)) == m.group(2)
    if m := re.fullmatch(r"\.(\w+)", cond):
        return bool(scope.get(m.group(1)))
    raise ValueError(f"unsupported condition {cond!r}")


def _render(nodes: list, scope: dict) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "var":
            out.append(str(scope[node[1]]))
        elif node[0] == "if":
            out.append(_render(node[2] if _test(node[1], scope) else node[3], scope))
        elif node[0] == "range":
            for item in scope[node[1].removeprefix(".")]:
                out.append(_render(node[2], {**scope, **item}))
    return "".join(out)


def render(template: str, **data) -> str:
    """Render `template` with data (Prompt, System, Messages as [{Role, Content}])."""
    nodes, _, ended = _parse(_tokens(template), 0, ())
    assert ended is None, "unbalanced {{ end }}"
    return _render(nodes, data)
