"""A small subset of Go's text/template, enough to render Ollama TEMPLATEs as Ollama would (for tests).

Supported: text, `{{ .Prompt }}` / `.System` / `.Response` / `.Role` / `.Content`, string literals
(`{{ "{{" }}`), `{{ if .X }}`, `{{ if eq .Role "assistant" }}`, `{{ else }}`, `{{ range .Messages }}`,
`{{ end }}`, and the `{{-` / `-}}` whitespace trimming. Anything else raises, so a template using more is not
silently misread.

`ollama(template, messages, system)` is what Ollama's chat endpoint sends the model for a conversation: the
Modelfile SYSTEM first unless the conversation opens with a system message (server/routes.go ChatHandler), then
template/template.go's Execute — consecutive messages of one role merged, a `.Messages` template rendered once,
any other template once per turn with `.System`/`.Prompt`/`.Response` and, for the new question, everything
after `{{ .Response }}` cut (a template with neither gets `{{ .Response }}` appended when it is parsed).
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


def _nodes(template: str) -> list:
    nodes, _, ended = _parse(_tokens(template), 0, ())
    assert ended is None, "unbalanced {{ end }}"
    return nodes


def render(template: str, **data) -> str:
    """Render `template` with data (Prompt, System, Messages as [{Role, Content}])."""
    return _render(_nodes(template), data)


# ---------------------------------------------------------------- what Ollama does with a TEMPLATE


def identifiers(nodes: list) -> set[str]:
    """The fields a template reads, lower-cased (template.go's Vars)."""
    names: set[str] = set()
    for node in nodes:
        if node[0] == "var":
            names.add(node[1].lower())
        elif node[0] == "if":
            names |= {m.lower() for m in re.findall(r"\.(\w+)", node[1])}
            names |= identifiers(node[2]) | identifiers(node[3])
        elif node[0] == "range":
            names |= {node[1].removeprefix(".").lower()} | identifiers(node[2])
    return names


def _cut_after_response(nodes: list) -> list:
    """template.go's deleteNode: keep everything up to the first {{ .Response }}, drop what follows."""
    cut = False

    def walk(nodes: list) -> list:
        nonlocal cut
        kept = []
        for node in nodes:
            if cut:
                continue
            if node[0] == "var" and node[1] == "Response":
                cut = True
                kept.append(node)
            elif node[0] == "if":
                then = walk(node[2])
                if cut and node[3]:
                    raise ValueError("{{ .Response }} inside an if with an else: Ollama's cut panics on it")
                kept.append(("if", node[1], then, walk(node[3])))
            elif node[0] == "range":
                kept.append(("range", node[1], walk(node[2])))
            else:
                kept.append(node)
        return kept

    return walk(nodes)


def collate(messages: list[dict]) -> list[dict]:
    """Consecutive messages of one role become one, joined by a blank line (template.go's collate)."""
    out: list[dict] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"]:
            out[-1] = {"role": m["role"], "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append(dict(m))
    return out


def ollama(template: str, messages: list[dict], system: str = "") -> str:
    """The prompt Ollama's chat endpoint renders for `messages` ({role, content}), the Modelfile's SYSTEM being
    `system`."""
    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    nodes = _nodes(template)
    names = identifiers(nodes)
    if "messages" not in names and "response" not in names:
        nodes = [*nodes, ("var", "Response")]  # template.go's Parse
    messages = collate(messages)
    if "messages" in names:
        systems = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        listed = [{"Role": m["role"], "Content": m["content"]} for m in messages]
        return _render(nodes, {"System": systems, "Messages": listed, "Response": "", "Prompt": ""})
    out, turn = [], {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(_render(nodes, turn))
        turn.update(System="", Prompt="", Response="")

    for m in messages:
        if m["role"] == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = m["content"]
        elif m["role"] == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = m["content"]
        elif m["role"] == "assistant":
            turn["Response"] = m["content"]
    return "".join(out) + _render(_cut_after_response(nodes), turn)
