"""Real protocol peers (sipp, baresip, Chromium) are required in CI and optional on a laptop."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_binary(name: str, *candidates: str) -> str:
    """Path of a peer's executable; fails under CI=true when missing, skips otherwise."""
    for candidate in (name, *candidates):
        path = shutil.which(candidate) or (candidate if os.path.isfile(candidate) else None)
        if path:
            return path
    message = f"real peer {name!r} is not installed (run `make test`, which installs it)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)
