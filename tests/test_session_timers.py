"""The per-loop TimerService shared by every session."""
from __future__ import annotations

import asyncio

from tether.session.adapters.timers import TimerService, clock


class Client:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.fired: list[float] = []

    def on_timer(self, now: float) -> None:
        self.fired.append(now)
        if self.fail:
            raise RuntimeError("a broken session")


async def test_one_failing_client_does_not_stop_the_others():
    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda loop, context: reported.append(context))
    try:
        service = TimerService(loop)
        broken, other, later = Client(fail=True), Client(), Client()
        now = clock()
        service.set(broken, now + 0.001)
        service.set(other, now + 0.001)
        service.set(later, now + 0.05)
        for _ in range(100):
            if later.fired:
                break
            await asyncio.sleep(0.01)
        assert broken.fired and other.fired and later.fired
        assert any(isinstance(c.get("exception"), RuntimeError) for c in reported)
    finally:
        loop.set_exception_handler(None)
