"""A built data set's stamp: the JSON file that says what it was built from, so a rebuild with
the same settings does nothing and one with other settings starts over."""

from __future__ import annotations

import json
from pathlib import Path


def stamp_matches(stamp: Path, identity: dict) -> bool:
    """True when `stamp` exists and records `identity` (other keys it holds, e.g. counts, aside)."""
    if not stamp.exists():
        return False
    built = json.loads(stamp.read_text())
    return {k: built.get(k) for k in identity} == identity
