"""msgtally: alerts."""
