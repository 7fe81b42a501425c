"""Fixtures shared by every test package; plain helpers live in suite.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from suite import REPO


@pytest.fixture
def repo_root() -> Path:
    return REPO
