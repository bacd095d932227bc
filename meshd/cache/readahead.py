"""Sequential-read detection and the read-ahead window.

Each file being read has a small record: where its last read ended and how
many reads in a row were sequential. A read that starts where the previous
one ended (within one page) is sequential; the window of pages fetched ahead
of the read then doubles, from ``min_pages`` up to ``max_pages``. Any other
read is random: the window drops to zero, so a random reader fetches exactly
the pages its ranges cover (no read amplification).

Within one read the node also keeps up to ``window`` page fetches in flight
ahead of the page being sent, but never beyond the read's end unless the
reader has proven sequential. Records are kept for the ``max_streams`` most
recently read files.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Stream:
    next_offset: int
    run: int  # consecutive sequential reads


class ReadAhead:
    def __init__(self, page_size: int, min_pages: int = 2, max_pages: int = 16,
                 max_streams: int = 4096) -> None:
        self.page_size = page_size
        self.min_pages = min_pages
        self.max_pages = max_pages
        self.max_streams = max_streams
        self._streams: OrderedDict[str, _Stream] = OrderedDict()

    def on_read(self, stream_key: str, offset: int, end: int) -> int:
        """Record a read of [offset, end); return pages to fetch beyond ``end``."""
        s = self._streams.get(stream_key)
        if s is not None and abs(offset - s.next_offset) <= self.page_size:
            s.run += 1
            s.next_offset = end
            self._streams.move_to_end(stream_key)
        else:
            s = _Stream(end, 0)
            self._streams[stream_key] = s
            if len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
        if s.run == 0:
            return 0
        return min(self.max_pages, self.min_pages << (s.run - 1))

    def in_read_window(self) -> int:
        """Fetches kept in flight ahead of the page being sent, inside one read."""
        return self.max_pages
