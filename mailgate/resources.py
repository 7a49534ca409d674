"""Where the migrations and templates are: inside an installed wheel, or at the repository top."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mailgate's {name}/ directory is missing from the installation")


def alembic_dir() -> Path:
    return _find("alembic")


def templates_dir() -> Path:
    return _find("templates")
