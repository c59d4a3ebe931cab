"""`new_loop_runner()`: how the `tether` command runs a coroutine (uvloop when installed)."""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def new_loop_runner() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """uvloop.run, or asyncio.run without uvloop."""
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency; plain asyncio still works without it
        return asyncio.run
    return uvloop.run
