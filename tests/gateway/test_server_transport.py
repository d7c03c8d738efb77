"""The gateway's HTTP transport sends what one turn of the event loop wrote as one write."""

from __future__ import annotations

import asyncio

from gateway.server import CoalescingTransport


class _RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_a_head_and_body_written_in_one_turn_leave_as_one_write() -> None:
    underlying = _RecordingTransport()
    transport = CoalescingTransport(underlying)
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"{}")
    assert underlying.writes == []
    await asyncio.sleep(0)
    assert underlying.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    transport.write(b"later")
    await asyncio.sleep(0)
    assert underlying.writes[1:] == [b"later"]


async def test_close_sends_what_is_held_first_and_nothing_is_sent_after() -> None:
    underlying = _RecordingTransport()
    transport = CoalescingTransport(underlying)
    transport.write(b"last words")
    transport.close()
    assert (underlying.writes, underlying.closed) == ([b"last words"], True)
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert underlying.writes == [b"last words"]
    assert transport.is_closing()  # everything else is the real transport's
