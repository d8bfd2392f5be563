"""Bytes of input a source holds at once: read ahead while there is room, wait when there is none.

Sources keep several inputs moving (S3 GETs ahead of decoding, Kinesis
batches fetched while the previous one commits) so that the decode threads
and the commit never wait on the network. What bounds that is bytes, not a
count: peak memory follows the bytes held, whatever mix of sizes arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class BytesInFlight:
    """A running sum of bytes held, and a wait for a condition on it (re-checked on every change)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        #: tasks waiting for room (tests observe it: nothing more starts while it is above zero)
        self.waiting = 0
        self._given = asyncio.Event()

    def fits(self, size: int) -> bool:
        """`size` more bytes stay within the limit; with nothing held, anything fits (a larger input goes alone)."""
        return self.held == 0 or self.held + size <= self.limit

    async def wait_until(self, ready: Callable[[], bool]) -> None:
        self.waiting += 1
        try:
            while not ready():
                self._given.clear()
                await self._given.wait()
        finally:
            self.waiting -= 1

    def take(self, size: int) -> None:
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
        self.notify()

    def notify(self) -> None:
        """Something a waiter's condition reads has changed (bytes given back, an input handed on)."""
        self._given.set()
