"""msgtally: slis."""
