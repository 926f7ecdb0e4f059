"""msgtally: dashboards."""
