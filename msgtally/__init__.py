"""msgtally: message delivery SLIs from produced and consumed message ids.

`from msgtally import Tally` gives the shim; it is loaded on first use so that
importing the package costs nothing a service does not ask for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
__all__ = ["Tally", "__version__"]

if TYPE_CHECKING:
    from msgtally.ingest.shim.tally import Tally


def __getattr__(name: str) -> Any:
    if name == "Tally":
        from msgtally.ingest.shim.tally import Tally

        return Tally
    raise AttributeError(f"module 'msgtally' has no attribute {name!r}")
