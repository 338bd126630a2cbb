"""
Bounds on what one page of a dump can cost, whatever its compressed size says. A bz2 stream
of 80 bytes expands to 45 MiB of one repeated byte, so a crafted dump of a few kB can expand
to terabytes: every reader here decompresses in pieces of at most PIECE_BYTES, and PageCap cuts
a page longer than MAX_PAGE_BYTES of XML as it streams past, so memory stays bounded by one
page whatever the input.

A cut page comes out as `<page><title>T</title><wikigpt-too-large/></page>`: still XML, so it
is parsed, counted ("too_large") and named in a warning like any page that is skipped. More
than MAX_PAGE_BYTES outside any page means the stream is not a dump at all: it is refused.
"""
import bz2
import re

from wikigpt.prep.errors import WikiError

# MediaWiki refuses to save a page over $wgMaxArticleSize = 2048 KB of wikitext (Wikipedia's
# setting). In the XML, escaping (&lt; &amp; &quot;) and the page's metadata add to that: 4.5 %
# on the built-in sample's pages over 50 kB, 11 % at most (2x only for text made of markup
# characters). 4 MiB keeps every real page and bounds what one page holds in memory.
MAX_PAGE_BYTES = 4 << 20
PIECE_BYTES = 1 << 20  # decompressed bytes per step: bounded, and large enough to be fast
BATCH_BYTES = 16 << 20  # whole pages parsed and cleaned at a time within one range
PAGE_OPEN, PAGE_CLOSE = b"<page>", b"</page>"
TOO_LARGE = b"<wikigpt-too-large/>"
_TITLE = re.compile(rb"<title>([^<]{0,1024})</title>")


def not_a_dump(name) -> WikiError:
    return WikiError(f"{name}: not a MediaWiki dump: more than {MAX_PAGE_BYTES >> 20} MiB of XML outside "
                     "any <page> (a dump is pages, with a short header). Use a *-pages-articles.xml[.bz2] "
                     "file from dumps.wikimedia.org.")


def cut_page(start: bytes) -> bytes:
    """The start of a page that is too large -> the open page that stands for it (its title kept)."""
    title = _TITLE.search(start[:1 << 16])
    return b"<page><title>" + (title[1] if title else b"") + b"</title>" + TOO_LARGE


class PageCap:
    """XML bytes in, the same bytes out, except that a page longer than MAX_PAGE_BYTES comes out
    cut (see the module doc). A byte range that starts inside a page (mid_page) passes its
    first bytes on up to the first <page> or </page>; when those are more than the cap, they
    come out as TOO_LARGE alone, and the Stitcher, which holds the page's start, cuts it."""

    def __init__(self, name, mid_page: bool = False, cap: int = MAX_PAGE_BYTES):
        self.name, self.cap = name, cap
        self.state = "head" if mid_page else "out"  # out, page, head, or skip (the rest of a cut page)
        self.buf = bytearray()  # bytes not passed on yet: the page so far, or a tag cut in two
        self.scanned = 0  # bytes of buf already searched for the tag that ends the page
        self.outside = 0  # bytes outside any page since the last one

    def feed(self, data: bytes) -> bytes:
        if self.state == "skip" and b"<" not in data and b"<" not in self.buf:
            self.buf.clear()  # no tag starts here: the bulk of a bomb passes at memchr's speed
            return b""
        self.buf += data
        out = []
        while self._step(out):
            pass
        return b"".join(out)

    def end(self) -> bytes:
        rest = b"" if self.state == "skip" else bytes(self.buf)
        self.buf.clear()
        return rest

    def _step(self, out: list) -> bool:
        """One move; False when it needs more bytes."""
        buf, keep = self.buf, len(PAGE_CLOSE) - 1  # a tag can be cut between two pieces
        if self.state == "skip":
            close = buf.find(PAGE_CLOSE)
            if close < 0:
                del buf[:max(0, len(buf) - keep)]
                return False
            del buf[:close + len(PAGE_CLOSE)]
            out.append(PAGE_CLOSE)
            self.state, self.outside = "out", 0
            return True
        if self.state == "out":
            opening = buf.find(PAGE_OPEN)
            end = opening if opening >= 0 else max(0, len(buf) - keep)
            self.outside += end
            if self.outside > self.cap:
                raise not_a_dump(self.name)
            out.append(bytes(buf[:end]))
            del buf[:end]
            if opening < 0:
                return False
            self.state, self.scanned = "page", 0
            return True
        return self._in_page(out)

    def _in_page(self, out: list) -> bool:
        buf, start = self.buf, max(0, self.scanned - len(PAGE_CLOSE) + 1)
        close = buf.find(PAGE_CLOSE, start)
        if self.state == "head":  # a head ends at the first page that opens, too
            opening = buf.find(PAGE_OPEN, start)
            if opening >= 0 and (close < 0 or opening < close) and opening <= self.cap:
                out.append(bytes(buf[:opening]))
                del buf[:opening]
                self.state, self.scanned = "page", 0
                return True
        end = close + len(PAGE_CLOSE) if close >= 0 else len(buf)
        if end <= self.cap:
            if close < 0:
                self.scanned = len(buf)
                return False
            out.append(bytes(buf[:end]))
            del buf[:end]
            self.state, self.outside = "out", 0
            return True
        out.append(cut_page(bytes(buf[:1 << 16])) if self.state == "page" else TOO_LARGE)
        if close >= 0:  # the whole page came in one piece
            out.append(PAGE_CLOSE)
            del buf[:end]
            self.state, self.outside = "out", 0
        else:
            del buf[:len(buf) - len(PAGE_CLOSE) + 1]
            self.state = "skip"
        return True


class CappedReader:
    """A binary file object read through PageCap: what ET.iterparse reads a one-stream dump from.
    raw.read(n) of BZ2File and GzipFile decompresses at most n bytes, so every step is bounded."""

    def __init__(self, raw, name):
        self.raw, self.cap, self.pending, self.done = raw, PageCap(name), bytearray(), False

    def read(self, n: int = -1) -> bytes:
        n = n if n and n > 0 else PIECE_BYTES
        while len(self.pending) < n and not self.done:
            data = self.raw.read(max(n, 1 << 16))
            self.pending += self.cap.feed(data) if data else self.cap.end()
            self.done = not data
        out = bytes(self.pending[:n])
        del self.pending[:n]
        return out


def capped_lines(stream, cap: int = MAX_PAGE_BYTES):
    """(line, too_large) for each line of a binary stream; a line longer than cap is read past
    in pieces, never held whole: only its first 64 kB come back (for its title)."""
    while line := stream.readline(cap + 1):
        if len(line) <= cap or line.endswith(b"\n"):
            yield line, False
            continue
        while (rest := stream.readline(PIECE_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield line[:1 << 16], True


class RangeXml:
    """The XML of a byte range of a dump, in capped pieces; after the iteration, `truncated`
    says whether the range ends a file whose last bz2 stream is cut short (what came before
    is kept, as a truncated download's pages are)."""

    def __init__(self, path, start: int, end: int, compressed: bool):
        self.path, self.start, self.end, self.compressed = path, start, end, compressed
        self.truncated = False

    def __iter__(self):
        cap = PageCap(self.path, mid_page=self.start > 0)
        with open(self.path, "rb") as raw:
            raw.seek(self.start)
            for piece in self._bz2(raw) if self.compressed else [raw.read(self.end - self.start)]:
                if out := cap.feed(piece):
                    yield out
        if out := cap.end():
            yield out

    def _bz2(self, raw):
        """Decompressed pieces of the range's concatenated bz2 streams, the compressed bytes
        read in pieces too (one stream can be the whole range)."""
        dec, left, data = bz2.BZ2Decompressor(), self.end - self.start, b""
        try:
            while True:
                if dec.eof:
                    data, dec = dec.unused_data, bz2.BZ2Decompressor()
                    if not data and not left:
                        return
                if dec.needs_input and not data:
                    data = raw.read(min(left, PIECE_BYTES))
                    left -= len(data)
                    if not data:  # the last stream goes on past the range
                        if self.end == self.path.stat().st_size:
                            self.truncated = True
                            return
                        raise ValueError("a bz2 stream continues past the end of its range")
                piece, data = dec.decompress(data, PIECE_BYTES), b""
                if piece:
                    yield piece
        except (OSError, ValueError, EOFError) as e:
            raise WikiError(f"{self.path}: bytes {self.start}-{self.end} are not whole bz2 streams ({e}). The dump "
                            "is damaged, or its index belongs to another dump: download it again, "
                            "or move the index file away to find the streams by scanning.")


class PageBatches:
    """Splits a range's XML pieces as ranges.split_pages splits the whole: its head (before the
    first <page>), its whole pages, and its tail; the pages come out in batches of about
    BATCH_BYTES, so a range of many pages is never held whole either."""

    def __init__(self, batch_bytes: int = BATCH_BYTES):
        self.batch_bytes, self.buf, self.head, self.batches = batch_bytes, bytearray(), None, 0
        self.offset = 0  # where the next batch starts, in bytes after the head

    def feed(self, piece: bytes) -> list:
        """-> [(whole pages, their offset after the head)], maybe none yet."""
        self.buf += piece
        if self.head is None:
            opening = self.buf.find(PAGE_OPEN)
            if opening < 0:
                return []
            self.head = bytes(self.buf[:opening])
            del self.buf[:opening]
        return [self._batch()] if len(self.buf) >= self.batch_bytes and self.buf.rfind(PAGE_CLOSE) >= 0 else []

    def _batch(self) -> tuple:
        end = self.buf.rfind(PAGE_CLOSE) + len(PAGE_CLOSE)
        batch, at = bytes(self.buf[:end]), self.offset
        del self.buf[:end]
        self.offset, self.batches = at + end, self.batches + 1
        return batch, at

    def close(self) -> tuple:
        """-> (the last batch or None, head, has_body, tail)."""
        if self.head is None:
            return None, bytes(self.buf), False, b""
        if self.buf.rfind(PAGE_CLOSE) >= 0:
            last = self._batch()
            return last, self.head, True, bytes(self.buf)
        if not self.batches:  # no whole page: a page begun here goes on in the next range
            return None, self.head + bytes(self.buf), False, b""
        return None, self.head, True, bytes(self.buf)
