"""A request's settlement: what its tenant pays, recorded once when it ends, however it ends.

Finished, failed or abandoned by its client, a request settles the tokens its ResponseWriter has
seen (an aborted stream pays for what it was sent). The Router awaits the settle before sending a
response's last byte; a client that left is settled in the background.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from deployments.ingress.responses import ResponseWriter
from deployments.tenants.gate import TenantGate, Ticket

__all__ = ["Settlement"]

# Settles of abandoned requests, held here until done: the event loop keeps only weak references.
_BACKGROUND: set[asyncio.Task[None]] = set()


@dataclass
class Settlement:
    """No gate or no ticket (auth off, or refused before admission): settling does nothing."""

    gate: TenantGate | None = None
    ticket: Ticket | None = None
    _done: bool = False

    def headers(self) -> dict[str, str]:
        """The tenant's x-ratelimit-* headers, as of its admission."""
        return self.ticket.headers() if self.ticket is not None else {}

    async def settle(self, writer: ResponseWriter) -> None:
        """Settle and wait for it; a cancelled caller does not cancel the settle (it is shielded)."""
        if self._claim():
            await asyncio.shield(self._spawn(writer))

    def settle_soon(self, writer: ResponseWriter) -> None:
        """Settle without waiting (the client left: this request's task is being cancelled)."""
        if self._claim():
            self._spawn(writer)

    def _spawn(self, writer: ResponseWriter) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._record(writer))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        return task

    def _claim(self) -> bool:
        """True once, for the first caller, when there is something to settle."""
        if self._done or self.gate is None or self.ticket is None:
            return False
        self._done = True
        return True

    async def _record(self, writer: ResponseWriter) -> None:
        assert self.gate is not None and self.ticket is not None  # _claim checked
        await self.gate.settle(self.ticket, writer.num_prompt_tokens, writer.num_generated_tokens)
