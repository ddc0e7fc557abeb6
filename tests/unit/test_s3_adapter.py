"""The S3 adapter's streaming read, with a stand-in client: what it asks of the response body."""

from __future__ import annotations

import io
from typing import Any

from catalens.adapters.s3 import READ_PIECE, S3BlobStore


class _RecordingBody(io.RawIOBase):
    """A response body like urllib3's: ``readinto(b)`` reads ``len(b)`` bytes into a temporary, then copies."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)
        self.largest_request = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self.largest_request = max(self.largest_request, len(b))
        temp = self._data.read(len(b))  # what urllib3 2.x does: a bytes object the size of the request
        b[: len(temp)] = temp
        return len(temp)


class _Client:
    def __init__(self, data: bytes) -> None:
        self.body = _RecordingBody(data)
        self.size = len(data)

    def get_object(self, **_: Any) -> dict[str, Any]:
        return {"Body": self.body, "ContentLength": self.size}


def test_get_into_reads_in_bounded_pieces_so_no_temporary_holds_a_whole_part() -> None:
    # urllib3's readinto(b) is read(len(b)) then a copy: asked for a whole 16-64 MB part at once, each fetch thread
    # held one or two temporaries of the part's size beside the buffer it fills (16 threads: GBs on a swap).
    data = bytes(range(256)) * (3 * READ_PIECE // 256 + 7)
    client = _Client(data)
    out = bytearray(len(data))
    assert S3BlobStore(client, "b").get_into("k", memoryview(out)) == len(data)
    assert out == data
    assert 0 < client.body.largest_request <= READ_PIECE
