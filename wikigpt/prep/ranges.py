"""
Reading a dump in byte ranges, in the worker processes (dumps.py reads the rest as one stream):
multistream .bz2 dumps (the `*-pages-articles-multistream*.xml.bz2` files; their streams of 100
pages each are independent, found through the `*-multistream-index*.txt.bz2` file beside the dump
or by scanning for the bz2 stream header) and uncompressed XML. Decompression, XML parsing and
cleaning then all scale with the number of workers; pages that span two ranges are stitched back
together in order (`Stitcher`), so both ways give the same pages in the same order.
"""
import bz2
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple
from xml.sax.saxutils import unescape

from wikigpt.prep.dumps import local_tag, not_mediawiki, raw_page, url_prefix_of
from wikigpt.prep.errors import WikiError
from wikigpt.prep.pagecap import MAX_PAGE_BYTES, PAGE_CLOSE, TOO_LARGE, PageCap, cut_page, not_a_dump

BZ2_STREAM = re.compile(rb"BZh[1-9]1AY&SY")  # stream header + first block magic (0x314159265359)
JOB_BYTES = 1 << 20  # bytes of compressed dump per worker job: ~10 streams of 100 pages of enwiki
PLAIN_JOB_BYTES = 4 << 20  # uncompressed XML: the same work per job, about
PROBE_BYTES = 32 << 20  # a .bz2 with no second stream in its first 32 MB is read as one stream

class RangePlan(NamedTuple):
    """How to read one file in byte ranges: where the ranges start, and the site's URL prefix."""
    path: Path
    compressed: bool
    starts: list  # offsets at which a worker can start reading (bz2 stream starts), ascending
    url_prefix: str

    def ranges(self):
        """(start, end) byte ranges for the worker jobs, cut only at self.starts: about
        JOB_BYTES each, smaller for small files so that even they keep every worker busy."""
        size = self.path.stat().st_size
        job_bytes = min(JOB_BYTES, max(size // 64, 4096))
        begin = 0
        for s in self.starts[1:]:
            if s - begin >= job_bytes:
                yield begin, s
                begin = s
        yield begin, size


def index_name(dump_name: str) -> str | None:
    """enwiki-X-pages-articles-multistream.xml.bz2 -> ...-multistream-index.txt.bz2;
    ...-multistream1.xml-p1p41242.bz2 -> ...-multistream-index1.txt-p1p41242.bz2"""
    m = re.match(r"^(.*multistream)(\d*)\.xml(.*)$", dump_name)
    return f"{m[1]}-index{m[2]}.txt{m[3]}" if m else None


def _index_for(path: Path) -> Path | None:
    name = index_name(path.name)
    return path.with_name(name) if name and path.with_name(name).is_file() else None


def _starts_from_index(path: Path, index: Path) -> list | None:
    """Stream offsets listed by a multistream index ("offset:page id:title" lines), or None
    (with a warning) when they do not fit the dump."""
    size = path.stat().st_size
    try:
        with bz2.open(index, "rt", encoding="utf-8") as f:
            offsets = sorted({int(line.split(":", 1)[0]) for line in _index_lines(f)})
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as e:
        print(f"warning: cannot read the index {index} ({e}); finding the streams of {path.name} "
              "by scanning instead.", file=sys.stderr)
        return None
    with open(path, "rb") as raw:
        for off in offsets:
            raw.seek(off)
            if off >= size or not BZ2_STREAM.match(raw.read(10)):
                print(f"warning: the index {index.name} does not match {path.name} (offset {off} "
                      f"is not the start of a bz2 stream; the dump has {size} bytes). Finding the "
                      "streams by scanning instead.", file=sys.stderr)
                return None
    return sorted({0, *offsets})


def _index_lines(f, limit: int = 4096):
    """The lines of an index ("offset:page id:title", a title at most 255 bytes), each read with
    a limit: a damaged or crafted index cannot make one line a memory bomb."""
    while line := f.readline(limit):
        if len(line) == limit and not line.endswith("\n"):
            raise ValueError(f"a line of more than {limit} characters")
        if line.strip():
            yield line


def _scan_starts(path: Path, limit: int | None = None) -> list:
    """Byte offsets of bz2 stream headers (each stream starts byte-aligned; the 10-byte header
    + block magic does not occur by chance in a dump's compressed data)."""
    starts, block, overlap = [], 16 << 20, 9
    with open(path, "rb") as raw:
        pos = 0
        while limit is None or pos < limit:
            raw.seek(pos)
            data = raw.read(block + overlap)
            starts += [pos + m.start() for m in BZ2_STREAM.finditer(data) if m.start() < block]
            if len(data) <= block:
                break
            pos += block
    return starts


def _first_stream(path: Path, limit: int = 1 << 20) -> bytes:
    """Up to `limit` decompressed bytes of the first bz2 stream (the siteinfo header)."""
    dec, out = bz2.BZ2Decompressor(), b""
    with open(path, "rb") as raw:
        while not dec.eof and len(out) < limit:
            chunk = raw.read(1 << 16)
            if not chunk:
                break
            out += dec.decompress(chunk, limit - len(out))
    return out


def range_plan(path: Path) -> RangePlan | None:
    """A RangePlan for a multistream .bz2 or an uncompressed XML dump, None for anything else."""
    with open(path, "rb") as raw:
        magic = raw.read(3)
    if magic == b"BZh":
        index = _index_for(path)
        starts = _starts_from_index(path, index) if index else None
        if starts is None:
            starts = _scan_starts(path, PROBE_BYTES)
            if len(starts) < 2:
                return None  # one big stream (or one per 32 MB+): read it as one stream
            starts = _scan_starts(path)
        head, compressed = _first_stream(path), True
    else:
        with open(path, "rb") as raw:
            head = raw.read(1 << 20)
        if not head.lstrip().startswith(b"<"):
            return None
        size = path.stat().st_size
        starts, compressed = list(range(0, size, PLAIN_JOB_BYTES)), False
    if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):  # a byte-order mark, blanks, then XML
        raise WikiError(f"{path}: not a MediaWiki dump: its first stream is not XML (it starts with "
                        f"{head[:40]!r}). Use a *-pages-articles.xml[.bz2] file from dumps.wikimedia.org.")
    root = re.search(rb"<(?!\?|!)([\w:.-]+)", head)  # the first element, after <?xml ...?>
    if root and local_tag(root[1].decode("ascii", "replace")).split(":")[-1] != "mediawiki":
        raise not_mediawiki(path, root[1].decode("ascii", "replace"))
    base = re.search(rb"<base>([^<]*)</base>", head)
    return RangePlan(path, compressed, starts, url_prefix_of(base[1].decode()) if base else "")


def split_pages(data: bytes):
    """XML bytes -> (head, body, tail): body runs from the first <page> to the end of the last
    </page> and holds whole pages only; head and tail are what a neighbouring range completes.
    body is None when data holds no whole page."""
    s, e = data.find(b"<page>"), data.rfind(b"</page>")
    if s < 0 or e < s:
        return data, None, b""
    e += len(b"</page>")
    return data[:s], data[s:e], data[e:]


def parse_pages(body: bytes, url_prefix: str, where) -> list:
    """Whole <page> elements (the body of split_pages) -> RawPages. where(i) names byte i of
    body for an error message."""
    try:
        pages = ET.fromstring(b"<pages>" + body + b"</pages>")
    except ET.ParseError as e:
        line, col = e.position
        lines = body.split(b"\n", line - 1)  # ET counts lines from 1 and columns from 0
        offset = sum(len(x) + 1 for x in lines[:line - 1]) + col - (len(b"<pages>") if line == 1 else 0)
        hint = ("The file has bytes that are not UTF-8 there." if "invalid token" in str(e)
                else "The dump is damaged or not XML.")
        msg = re.sub(r": line \d+, column \d+$", "", e.msg)  # a position in our wrapper: misleading
        raise WikiError(f"{where(offset)}: malformed XML ({msg}). {hint} Download it again.")
    return [raw_page(p, url_prefix) for p in pages if local_tag(p.tag) == "page"]


class Stitcher:
    """Joins the pages that span two ranges, in order: the tail of one range + the head of the
    next hold whole pages (a Wikimedia multistream cuts between pages, so both are blank).
    What it carries is capped as the ranges are (pagecap.py): a page that goes on past
    MAX_PAGE_BYTES is carried as its cut start only, and the rest of it is dropped as it comes."""

    def __init__(self, carry: bytes = b""):
        self.carry = carry

    def feed(self, head: bytes, has_body: bool, tail: bytes, url_prefix: str, where, name) -> list:
        """The RawPages completed by this range's head (to go before its body's pages)."""
        carry = self.carry
        if carry.endswith(TOO_LARGE):  # a page cut in an earlier range: the rest of it goes
            close = head.find(PAGE_CLOSE)
            head = head[close:] if close >= 0 else b""
        elif head.startswith(TOO_LARGE):  # this range starts deep inside the carried page
            carry, head = self._cut(carry, name), head[len(TOO_LARGE):]
        joined = carry + head
        if len(joined) > MAX_PAGE_BYTES:  # a page across ranges too long to keep, closed or not
            cap = PageCap(name)
            joined = cap.feed(joined) + cap.end()
        _, body, rest = split_pages(joined)
        self.carry = tail if has_body else rest if body else joined  # no page here: keep collecting
        return parse_pages(body, url_prefix, where) if body else []

    @staticmethod
    def _cut(carry: bytes, name) -> bytes:
        opening = carry.rfind(b"<page>")
        if opening < 0:
            raise not_a_dump(name)
        return carry[:opening] + cut_page(carry[opening:])

    def finish(self, path: Path):
        if b"<page>" in self.carry:
            raise WikiError(f"{path}: the dump ends inside a <page> (truncated download?). "
                            "Download it again.")


def write_multistream(header: bytes, pages: list, footer: bytes, path: Path, per_stream: int = 100):
    """Write pages as Wikimedia does: a bz2 stream for the header, one per `per_stream` pages and
    one for the footer, plus the index file (offset:page id:title per page) beside the dump."""
    m = re.match(r"^(.*)\.xml\.bz2$", path.name)
    assert m and "multistream" in path.name, "name it like *-multistream.xml.bz2"
    index_lines = []
    with open(path, "wb") as out:
        out.write(bz2.compress(header))
        for i in range(0, len(pages), per_stream):
            offset = out.tell()
            for p in pages[i:i + per_stream]:
                pid = re.search(rb"<id>(\d+)</id>", p)
                title = re.search(rb"<title>([^<]*)</title>", p)  # as XML-escaped in the dump
                title = unescape(title[1].decode()).encode() if title else b""
                index_lines.append(b"%d:%s:%s\n" % (offset, pid[1] if pid else b"0", title))
            out.write(bz2.compress(b"".join(pages[i:i + per_stream])))
        out.write(bz2.compress(footer))
    path.with_name(f"{m[1]}-index.txt.bz2").write_bytes(bz2.compress(b"".join(index_lines)))
