"""mailgate: an email-to-ticket gateway daemon."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # The version is the installed package's (pyproject.toml says it once); looked up only when
    # asked, so importing mailgate costs an MTA's pipe process nothing.
    if name == "__version__":
        from importlib.metadata import version

        return version("mailgate")
    raise AttributeError(f"module 'mailgate' has no attribute {name!r}")
