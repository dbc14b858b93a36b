"""One line describing each shipped config, for ``robustcompress config list``."""

from __future__ import annotations

import re
from pathlib import Path

import yaml


def describe_config(path: Path, width: int = 120) -> str:
    """The config's ``description:``, else its leading comment up to the first full stop."""
    text = path.read_text()
    try:
        desc = (yaml.safe_load(text) or {}).get("description")
    except yaml.YAMLError as e:
        return f"(unreadable YAML: {str(e).splitlines()[0]}; `robustcompress config check` says where)"
    if desc:
        return str(desc)
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    head = " ".join(lines)
    if not head:
        return "(no description: add `description:` to the config)"
    first = re.split(r"(?<!vs)\.\s+(?=[A-Z(])", head)[0].rstrip(".")
    return first if len(first) <= width else first[:width - 3].rstrip() + "..."


def describe_configs() -> dict[str, str]:
    """Every shipped config's name and one-line description."""
    from robustcompress.experiments.api import list_configs

    return {name: describe_config(p) for name, p in list_configs().items()}
