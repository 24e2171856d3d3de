"""Server test fixtures. Skipped as a whole without the 'serve' extra."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'serve' extra (fastapi)")


@pytest.fixture(scope="session")
def red_png(style_images) -> bytes:
    return style_images["red"].read_bytes()
