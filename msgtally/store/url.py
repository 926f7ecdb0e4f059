"""Naming the store: the embedded default and the URLs a user may type.

Plain strings, no database driver: the settings and the CLI's help text use
these without loading SQLAlchemy.
"""

DEFAULT_DB_FILE = "msgtally.db"
DEFAULT_DB_URL = f"sqlite:///{DEFAULT_DB_FILE}"


def normalize_url(url: str) -> str:
    """Accept a bare file path for SQLite and plain postgresql:// URLs."""
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url
