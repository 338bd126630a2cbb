"""
Reading Wikipedia sources for prepare_wiki.py: MediaWiki XML dumps (plain, .bz2, .gz),
JSONL (Hugging Face exports, WikiExtractor --json), parquet, and folders of them.

A source file is read one of two ways:
  - in byte ranges, by the worker processes: multistream .bz2 dumps (the
    `*-pages-articles-multistream*.xml.bz2` files; their streams of 100 pages each are
    independent, found through the `*-multistream-index*.txt.bz2` file beside the dump or by
    scanning for the bz2 stream header) and uncompressed XML. Decompression, XML parsing and
    cleaning then all scale with the number of workers.
  - as one stream, in the main process: single-stream .bz2, .gz, JSONL and parquet.
Pages that span two ranges are stitched back together in order (`Stitcher`), so both ways give
the same pages in the same order.

Every page comes out as a RawPage, the ones to skip (redirects, other namespaces) included, so
that skip counts are made in order and do not depend on the number of workers.
"""
import bz2
import gzip
import importlib.util
import json
import re
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote
from xml.sax.saxutils import unescape

from wikigpt.prep.errors import WikiError
from wikigpt.prep.pagecap import (MAX_PAGE_BYTES, PAGE_CLOSE, TOO_LARGE, CappedReader, PageCap, capped_lines,
                                  cut_page, not_a_dump)

__all__ = ["WikiError"]  # raised by every reader; imported from here by the commands


class RawPage(NamedTuple):
    title: str
    text: str
    markup: str  # "wikitext" (dumps) or "plain" (pre-extracted sources)
    info: dict  # page id and URL where the source has them; a redirect's target title
    skip: str | None = None  # why the page is not an article ("redirect", "not_article", "too_large")


BZ2_STREAM = re.compile(rb"BZh[1-9]1AY&SY")  # stream header + first block magic (0x314159265359)
JOB_BYTES = 1 << 20  # bytes of compressed dump per worker job: ~10 streams of 100 pages of enwiki
PLAIN_JOB_BYTES = 4 << 20  # uncompressed XML: the same work per job, about
PROBE_BYTES = 32 << 20  # a .bz2 with no second stream in its first 32 MB is read as one stream


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # drop the XML namespace: "{http://...}page" -> "page"


def open_maybe_compressed(raw):
    """Wrap a binary file in a decompressor chosen by its magic bytes, not its name
    (dump part names like '...xml-p1p41242.bz2' defeat extension checks)."""
    magic = raw.read(3)
    raw.seek(0)
    if magic == b"BZh":
        return bz2.BZ2File(raw)  # handles multistream dumps (many concatenated streams)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw)
    return raw


def truncated_message(path, pages: int, articles: int) -> str:
    return (f"{path}: the compressed file ends early (truncated download?) after {pages} pages "
            f"({articles} of them articles) were read. Download it again (a URL source resumes "
            "a partial download).")


def _not_a_dump(path, root: str) -> WikiError:
    return WikiError(f"{path}: this XML is not a MediaWiki dump (its root element is <{root}>, "
                     "expected <mediawiki>). Use a *-pages-articles.xml[.bz2] file from "
                     "dumps.wikimedia.org.")


_REDIRECT_LINK = re.compile(r"\[\[([^\[\]|]+)")


def raw_page(elem, url_prefix: str) -> RawPage:
    """A parsed <page> element -> RawPage; namespace-0 pages that are not redirects are articles."""
    fields = {_local(c.tag): c for c in elem}
    revision = {_local(c.tag): c for c in fields.get("revision", [])}
    title = (fields["title"].text or "") if "title" in fields else ""
    if "wikigpt-too-large" in fields:  # cut by PageCap: counted, and named in a warning
        return RawPage(title, "", "wikitext", {}, "too_large")
    ns = (fields["ns"].text or "0").strip() if "ns" in fields else "0"
    text = revision["text"].text or "" if "text" in revision else ""
    info = {"id": (fields["id"].text or "").strip() if "id" in fields else ""}
    if ns != "0":
        return RawPage(title, "", "wikitext", info, "not_article")
    if "redirect" in fields or text.lstrip().lower().startswith("#redirect"):
        target = fields["redirect"].get("title") if "redirect" in fields else None
        if not target and (m := _REDIRECT_LINK.search(text)):
            target = m[1]
        return RawPage(title, "", "wikitext", {**info, "redirect": target or ""}, "redirect")  # an alias
    if url_prefix:
        info["url"] = url_prefix + quote(title.replace(" ", "_"))
    return RawPage(title, text, "wikitext", info)


def _url_prefix(base: str) -> str:
    """<siteinfo><base>https://en.wikipedia.org/wiki/Main_Page</base> -> 'https://en.wikipedia.org/wiki/'"""
    return base.strip().rsplit("/", 1)[0] + "/"


# ----------------------------------------------------------------------------------------
# One stream, in the main process


def read_xml(path: Path, progress):
    """Stream the RawPages of an XML dump; memory stays flat because every finished <page> is
    cleared from the tree, and no page holds more than MAX_PAGE_BYTES (pagecap.py)."""
    pages = articles = 0
    url_prefix = ""
    with open(path, "rb") as raw:
        stream = open_maybe_compressed(raw)
        try:
            context = ET.iterparse(CappedReader(stream, path), events=("start", "end"))
            _, root = next(context)
            if _local(root.tag) != "mediawiki":
                raise _not_a_dump(path, _local(root.tag))
            for event, elem in context:
                if event == "end" and _local(elem.tag) == "base" and elem.text:
                    url_prefix = _url_prefix(elem.text)
                if event != "end" or _local(elem.tag) != "page":
                    continue
                page = raw_page(elem, url_prefix)
                pages += 1
                articles += page.skip is None
                root.clear()
                progress.at(raw.tell())
                yield page
        except EOFError:
            raise WikiError(truncated_message(path, pages, articles))
        except ET.ParseError as e:
            line, col = e.position
            hint = ("The file has bytes that are not UTF-8 there." if "invalid token" in str(e)
                    else "The dump is damaged or not XML.")
            raise WikiError(f"{path}: malformed XML at line {line}, column {col} ({e.msg}) after "
                            f"{pages} pages ({articles} of them articles) were read. {hint} "
                            "Download it again.")
        except (OSError, StopIteration) as e:
            raise WikiError(f"{path}: cannot read this as a {'compressed ' if stream is not raw else ''}"
                            f"MediaWiki XML dump ({e or 'empty file'}). Check the file and its extension.")


def read_jsonl(path: Path, progress):
    """Pre-extracted articles, one JSON object per line with "title" and "text"
    (Hugging Face exports, WikiExtractor --json). Text is taken as plain text."""
    rows = 0
    with open(path, "rb") as raw:
        stream = open_maybe_compressed(raw)
        try:
            for lineno, (line, too_large) in enumerate(capped_lines(stream), 1):
                if too_large:  # over MAX_PAGE_BYTES: skipped, counted, named by its title
                    yield RawPage(_jsonl_title(line), "", "plain", {}, "too_large")
                    continue
                if line.strip():
                    rows += 1
                    page = jsonl_page(path, lineno, line)
                    progress.at(raw.tell())
                    yield page
        except EOFError:
            raise WikiError(truncated_message(path, rows, rows))
        except (OSError, zlib.error) as e:  # a damaged .gz or .bz2: a bad CRC, a corrupt block
            raise WikiError(f"{path}: cannot read this as a {'compressed ' if stream is not raw else ''}JSON-lines "
                            f"file ({e}) after {rows} articles were read. Download it again.")


def jsonl_page(path: Path, lineno: int, line: bytes) -> RawPage:
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise WikiError(f"{path}:{lineno}: bytes that are not UTF-8 at column {e.start + 1}. "
                        "Re-encode the file as UTF-8.")
    except json.JSONDecodeError as e:
        raise WikiError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}). "
                        'Each line must be one object like {"title": ..., "text": ...}.')
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise WikiError(f'{path}:{lineno}: expected an object with a string "text" field '
                        f"(and a \"title\"), got {str(row)[:80]!r}.")
    info = {k: str(row[k]) for k in ("id", "url") if row.get(k)}
    return RawPage(str(row.get("title", "")), row["text"], "plain", info)


_JSON_TITLE = re.compile(rb'"title"\s*:\s*("(?:[^"\\]|\\.){0,1024}")')


def _jsonl_title(start: bytes) -> str:
    """The title of a JSON line too long to read, from its first bytes ('' when not there)."""
    m = _JSON_TITLE.search(start)
    try:
        return json.loads(m[1]) if m else ""
    except ValueError:
        return ""


def read_parquet(path: Path, progress):
    """Hugging Face wikimedia/wikipedia parquet: columns "title" and "text", read in batches."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise WikiError(f"{path}: cannot open as parquet ({e}).")
    columns = pf.schema_arrow.names
    if "text" not in columns or "title" not in columns:
        raise WikiError(f"{path}: parquet needs columns 'title' and 'text'; it has {columns}.")
    size = path.stat().st_size
    extra = [c for c in ("id", "url") if c in columns]  # wikimedia/wikipedia has both
    for i in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(i, columns=["title", "text", *extra]).to_pydict()
        except (OSError, ValueError) as e:  # pyarrow's: corrupt compressed data, a bad page header
            raise WikiError(f"{path}: row group {i + 1} of {pf.num_row_groups} is damaged ({e}). Download it again.")
        for j, (title, text) in enumerate(zip(table["title"], table["text"])):
            info = {c: str(table[c][j]) for c in extra if table[c][j]}
            too_large = len(text or "") > MAX_PAGE_BYTES  # the cap of every source (pagecap.py)
            yield RawPage(title or "", "" if too_large else text or "", "plain", info, "too_large" if too_large else None)
        progress.at(size * (i + 1) // pf.num_row_groups)


EXPECTED_SOURCES = ("Expected a MediaWiki XML dump (.xml, .xml.bz2, .xml.gz), JSON lines with "
                    '"title" and "text" ({"title": ..., "text": ...} on each line), a .parquet '
                    "file with those columns, or a folder of them.")


def reader_for(path: Path):
    """Pick the reader by the file's content: parquet magic, else the first non-blank
    decompressed byte: '<' is XML, '{' is JSON lines; anything else is refused."""
    with open(path, "rb") as raw:
        if raw.read(4) == b"PAR1":
            return read_parquet
        raw.seek(0)
        try:
            head = open_maybe_compressed(raw).read(1024).lstrip()
        except EOFError:
            raise WikiError(truncated_message(path, 0, 0))
        except OSError as e:
            raise WikiError(f"{path}: cannot decompress the start of the file ({e}). "
                            "Check that it is a complete .bz2/.gz download.")
    if head.startswith(b"<"):
        return read_xml
    if head.startswith(b"{") or not head:
        return read_jsonl
    raise WikiError(f"{path}: not a source this tool reads: it starts with {described(head)}. " + EXPECTED_SOURCES)


HTML = re.compile(rb"\s*<(!doctype\s+html|html)\b", re.I)  # a web server's error or login page


def described(head: bytes) -> str:
    """A file's first bytes, as a message names them: an HTML page, text or binary data, and how it starts."""
    looks = head.lstrip()[:60].decode("utf-8", "replace").split("\n")[0]
    text = all(32 <= b < 127 or b in b"\t\r\n" or b >= 0x80 for b in head[:200])
    return f"{'an HTML page' if HTML.match(head) else 'text' if text else 'binary data'} ({looks!r})"


INDEX_NAME = re.compile(r"-index\d*\.txt")  # enwiki-...-multistream-index.txt.bz2, ...-index1.txt-p1p41242.bz2


def source_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and not INDEX_NAME.search(p.name))  # an index is read with its dump
        if not files:
            raise WikiError(f"{path}: the folder holds no source files. " + EXPECTED_SOURCES)
    elif not path.is_file():
        raise WikiError(f"{path}: no such file or folder. Pass a dump (.xml/.xml.bz2/.xml.gz), "
                        "a .jsonl/.parquet of articles, a folder of them, or an https:// URL.")
    else:
        files = [path]
    if all(map(_holds_nothing, files)):  # said now, not as "only 0 article(s) left after cleaning"
        raise WikiError(f"{path}: {'the file' if files == [path] else 'every file in the folder'} is empty (no text "
                        "in it, even once decompressed): nothing to prepare. Was its download or copy cut short? Do "
                        "it again, or give another source.")
    return files


def _holds_nothing(path: Path) -> bool:
    """0 bytes, blanks, or a .bz2/.gz of nothing; read only when small (no article fits in 4 KiB)."""
    with open(path, "rb") as raw:
        try:
            return path.stat().st_size <= 4096 and not open_maybe_compressed(raw).read(4096).strip()
        except (OSError, EOFError, zlib.error):  # a damaged start is said where the file is read
            return False


def default_source() -> Path:
    """The real English Wikipedia fragment (106 pages) that gensim's wheel ships for its tests."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise WikiError("no source given and the built-in sample is not installed. Run "
                        "`pip install gensim` (it ships a small English dump) or pass a dump path/URL.")
    path = (Path(spec.origin).parent / "test" / "test_data" /
            "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    if not path.is_file():
        raise WikiError(f"the built-in sample {path} is missing from this gensim install; "
                        "pass a dump path or URL instead.")
    return path


# ----------------------------------------------------------------------------------------
# Byte ranges, in the workers: multistream .bz2 and plain XML


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
    if root and _local(root[1].decode("ascii", "replace")).split(":")[-1] != "mediawiki":
        raise _not_a_dump(path, root[1].decode("ascii", "replace"))
    base = re.search(rb"<base>([^<]*)</base>", head)
    return RangePlan(path, compressed, starts, _url_prefix(base[1].decode()) if base else "")


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
    return [raw_page(p, url_prefix) for p in pages if _local(p.tag) == "page"]


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
