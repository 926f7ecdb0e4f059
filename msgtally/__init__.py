"""msgtally: msgtally."""
