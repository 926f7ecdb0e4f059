"""How many random examples a property test draws: few in the README's run, many deep.

MSGTALLY_DEEP=1 draws the deep counts: `.ci/run` runs every test that uses
`examples` again with it, and `.ci/sanitize` runs its tests with it (a wrong
read shows there as the memory error it is).
"""

from __future__ import annotations

import os

DEEP = os.environ.get("MSGTALLY_DEEP") == "1"


def examples(fast: int, deep: int) -> int:
    """The example count of this run: `deep` under MSGTALLY_DEEP=1, else `fast`."""
    return deep if DEEP else fast
