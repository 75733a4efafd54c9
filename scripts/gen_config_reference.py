"""Regenerate README.md's config reference from the config field descriptions
(finetune/config_schema.py, config_datasets.py).

    python scripts/gen_config_reference.py          # rewrite README.md in place
    python scripts/gen_config_reference.py --check  # exit 1 if README.md is stale (used by the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

from finetune.config import reference_markdown

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def render(readme: str) -> str:
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{reference_markdown()}\n{END}{tail}"


if __name__ == "__main__":
    text = README.read_text()
    new = render(text)
    if "--check" in sys.argv:
        sys.exit(0 if new == text else 1)
    README.write_text(new)
