"""Group commit: inputs that finish decoding close together commit in one transaction.

A commit of one object over thousands of ENIs upserts thousands of rows; the
next object touches mostly the same rows. So decoded inputs wait briefly to
commit together: a group closes when it holds `max_inputs` inputs or
`max_bytes` of input bytes, when `delay_seconds` have passed since its first
input was ready, or at once when no other input is being decoded (a lone
input never waits for company that is not coming). While one group commits,
the next gathers.

What a group does (claims, capping, detection, the transaction) is the
caller's `commit` function; this module only decides who goes together and
keeps the cancellation rule: an input not yet taken into a group is
abandoned uncommitted when its caller is cancelled (SIGTERM), an input whose
group is committing waits for that commit to end, then lets the cancellation
through.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Limits:
    """When a group closes (see the module's docstring)."""

    max_inputs: int = 16
    max_bytes: int = 64 << 20
    delay_seconds: float = 0.15


@dataclasses.dataclass(eq=False)
class Member(Generic[T, R]):
    """One input waiting for, or in, a group; `result` is set by the group's commit."""

    item: T
    size: int
    ready_at: float
    result: asyncio.Future[R]
    taken: bool = False


class Grouper(Generic[T, R]):
    """Gathers inputs into groups and runs `commit` on one group at a time, in the order they were ready.

    `commit` must set every member's `result` (a value or an exception); if it raises instead, every
    member still unresolved gets that exception. `decoding()` says how many inputs may still join soon.
    """

    def __init__(
        self,
        limits: Limits,
        commit: Callable[[list[Member[T, R]]], Awaitable[None]],
        decoding: Callable[[], int],
    ) -> None:
        self.limits = limits
        self._commit = commit
        self._decoding = decoding
        self._pending: list[Member[T, R]] = []
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        #: groups committed and inputs in them (tests and the bench read these)
        self.groups = 0
        self.inputs = 0

    async def submit(self, item: T, size: int) -> R:
        """Commit `item` with whatever is ready close to it; returns its own result."""
        loop = asyncio.get_running_loop()
        member: Member[T, R] = Member(item, size, loop.time(), loop.create_future())
        self._pending.append(member)
        self._arrived.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        try:
            return await asyncio.shield(member.result)
        except asyncio.CancelledError:
            if not member.taken:  # not in a group yet: abandoned, read again later
                self._pending.remove(member)
                self._arrived.set()
                raise
            while not member.result.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([member.result])
            if not member.result.cancelled() and member.result.exception() is not None:
                # Stopping wins: a failed commit must not replace the cancellation (a retry loop above
                # would swallow it and the process would never stop).
                log.warning("stopping; the commit in flight failed: %s", member.result.exception())
            raise

    def _closes(self) -> bool:
        """The pending inputs make a full group, or nothing more is coming soon."""
        if len(self._pending) >= self.limits.max_inputs:
            return True
        if sum(m.size for m in self._pending) >= self.limits.max_bytes:
            return True
        return self._decoding() == 0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            while self._pending and not self._closes():
                remaining = self._pending[0].ready_at + self.limits.delay_seconds - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            group = self._take()
            if not group:
                continue
            try:
                await self._commit(group)
            except Exception as exc:
                for member in group:
                    if not member.result.done():
                        member.result.set_exception(exc)
            except BaseException:
                for member in group:
                    if not member.result.done():
                        member.result.cancel()
                raise
            self.groups += 1
            self.inputs += len(group)

    def _take(self) -> list[Member[T, R]]:
        """The oldest pending inputs, within the bounds (always at least one)."""
        group: list[Member[T, R]] = []
        size = 0
        for member in self._pending:
            if group and (len(group) >= self.limits.max_inputs or size + member.size > self.limits.max_bytes):
                break
            group.append(member)
            size += member.size
        del self._pending[: len(group)]
        for member in group:
            member.taken = True
        return group
