"""HTTP webhooks: `publisher` (a retrying httpx sender, httpx only) and `receiver`
(ASGI middleware and a FastAPI dependency, with the `webhooks` extra).

Both speak the adapters' common dialect (`msgtally.ingest.shim.adapters.common`);
each module's docstring has a usage example and the exact policy.
"""

__all__ = ["ATTEMPT_HEADER", "publisher", "receiver"]

ATTEMPT_HEADER = "msgtally-attempt"
