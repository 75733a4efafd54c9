"""The files the Hugging Face hub's Ollama integration reads from a GGUF repo, made from the export's Modelfile.

`ollama run hf.co/USER/REPO` never sees a Modelfile: the hub builds Ollama's manifest from the repo's GGUF and
three optional files at its top (https://huggingface.co/docs/hub/ollama, "Custom Chat Template and Parameters"):
`template` (a Go template, else one guessed from the GGUF's Jinja chat template), `system` (the default system
prompt) and `params` (JSON: the Modelfile's PARAMETERs, `stop` as a list). `finetune push --gguf` writes them
from the folder's Modelfile as it is now (export.prompt_template.modelfile wrote it; a user may have edited it),
so the pushed repo prompts, stops and samples as `ollama create -f Modelfile` does.

The Modelfile is read as Ollama's parser/parser.go reads it: a command word, then a value to the end of the line,
or up to the closing quotes of a quoted (or triple-quoted) value that spans lines; `#` starts a comment line; a
later TEMPLATE or SYSTEM replaces an earlier one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from finetune.errors import UserError

_COMMAND = re.compile(r"([A-Za-z]+)[ \t]+(.*)", re.S)
_PARAMETER = re.compile(r"([A-Za-z0-9_]+)[ \t]+(.*)", re.S)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _unquote(value: str) -> str | None:
    """parser.go's unquote: the text inside the quotes; None while a quoted value is still open."""
    if value.startswith('"""'):
        return value[3:-3] if len(value) >= 6 and value.endswith('"""') else None
    if value.startswith('"'):
        return value[1:-1] if len(value) >= 2 and value.endswith('"') else None
    return value


def read_modelfile(path: Path) -> list[tuple[str, str, str]]:
    """(command, parameter name or "", value) in order; a bad line or an unclosed quote is a one-line UserError."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    commands, i = [], 0
    while i < len(lines):
        start, line = i + 1, lines[i].lstrip(" \t")
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        found = _COMMAND.match(line)
        if found is None:
            raise UserError(f"{path}:{start}: not a Modelfile command: {line.strip()[:60]!r}")
        command, parameter, value = found[1].lower(), "", found[2]
        if command == "parameter":
            found = _PARAMETER.match(value)
            if found is None:
                raise UserError(f"{path}:{start}: PARAMETER needs a name and a value")
            parameter, value = found[1], found[2]
        while _unquote(value.strip()) is None:
            if i == len(lines):
                raise UserError(f"{path}:{start}: the quoted value is never closed")
            value += lines[i]
            i += 1
        commands.append((command, parameter, _unquote(value.strip())))
    return commands


def _typed(value: str):
    """A PARAMETER value as JSON wants it: Ollama reads numbers and booleans from `params`, not strings."""
    if value in ("true", "false"):
        return value == "true"
    if _NUMBER.fullmatch(value):
        return int(value) if re.fullmatch(r"[+-]?\d+", value) else float(value)
    return value


def hub_files(modelfile: Path) -> dict[str, bytes]:
    """`template`, `system` and `params` for the repo (each only when the Modelfile says something of it)."""
    template = system = None
    params: dict = {}
    for command, parameter, value in read_modelfile(modelfile):
        if command == "template":
            template = value
        elif command == "system":
            system = value
        elif parameter == "stop":
            params.setdefault("stop", []).append(value)
        elif parameter:
            params[parameter] = _typed(value)
    files = {"template": template, "system": system}
    out = {name: text.encode() for name, text in files.items() if text}
    if params:
        out["params"] = (json.dumps(params, indent=2, ensure_ascii=False) + "\n").encode()
    return out
