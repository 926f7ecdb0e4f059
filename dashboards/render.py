"""Dashboard JSON as text: sorted keys, two-space indent, a trailing newline (stable diffs)."""

from __future__ import annotations

import json
from typing import Any


def render_dashboard(data: dict[str, Any]) -> str:
    """The file text of one dashboard; an empty one is an error, not an empty file."""
    if not data.get("panels"):
        raise ValueError("no panels to render")
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
