"""A request's end: recorded once (metrics and its log line), and what its tenant pays settled once,
however it ends.

Finished, failed or abandoned by its client, a request settles the tokens its ResponseWriter has
seen (an aborted stream pays for what it was sent). The Router awaits the settle before sending a
response's last byte; a client that left is settled in the background.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from deployments.errors import ApiError
from deployments.ingress.responses import ResponseWriter
from deployments.observability.request_log import CLIENT_CLOSED, RequestRecord
from deployments.tenants.gate import TenantGate, Ticket

__all__ = ["Settlement"]

# Settles of abandoned requests, held here until done: the event loop keeps only weak references.
_BACKGROUND: set[asyncio.Task[None]] = set()


@dataclass
class Settlement:
    """Without a gate and a ticket (auth off, or refused before admission) only the record is kept."""

    record: RequestRecord
    gate: TenantGate | None = None
    ticket: Ticket | None = None
    _done: bool = False

    def headers(self) -> dict[str, str]:
        """The tenant's x-ratelimit-* headers, as of its admission."""
        return self.ticket.headers() if self.ticket is not None else {}

    async def settle(self, writer: ResponseWriter | None, status_code: int, error: ApiError | None = None) -> None:
        """End the request with `status_code` and wait for its settle; a cancelled caller does not
        cancel the settle (it is shielded)."""
        if self._claim(writer, status_code, error) and writer is not None:
            await asyncio.shield(self._spawn(writer))

    def settle_soon(self, writer: ResponseWriter | None) -> None:
        """End the request as closed by its client and settle without waiting (its task is being
        cancelled). Nothing to do when it ended already."""
        if self._claim(writer, CLIENT_CLOSED, None) and writer is not None:
            self._spawn(writer)

    def _spawn(self, writer: ResponseWriter) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._record(writer))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        return task

    def _claim(self, writer: ResponseWriter | None, status_code: int, error: ApiError | None) -> bool:
        """For the first caller only: record the end; True when there is something to settle."""
        if self._done:
            return False
        self._done = True
        self.record.finish(status_code, writer, error)
        return self.gate is not None and self.ticket is not None

    async def _record(self, writer: ResponseWriter) -> None:
        assert self.gate is not None and self.ticket is not None  # _claim checked
        await self.gate.settle(self.ticket, writer.num_prompt_tokens, writer.num_generated_tokens)
