"""
Reading Wikipedia sources for prepare_wiki.py: MediaWiki XML dumps (plain, .bz2, .gz),
JSONL (Hugging Face exports, WikiExtractor --json), parquet, and folders of them.

A source file is read one of two ways:
  - in byte ranges, by the worker processes: multistream .bz2 dumps and uncompressed XML
    (ranges.py);
  - as one stream, in the main process: single-stream .bz2, .gz, JSONL and parquet (here).
Both give the same pages in the same order.

Every page comes out as a RawPage, the ones to skip (redirects, other namespaces) included, so
that skip counts are made in order and do not depend on the number of workers.
"""
import bz2
import gzip
import importlib.util
import json
import re
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from wikigpt.prep.errors import WikiError
from wikigpt.prep.pagecap import MAX_PAGE_BYTES, CappedReader, capped_lines

__all__ = ["WikiError"]  # raised by every reader; imported from here by the commands


class RawPage(NamedTuple):
    title: str
    text: str
    markup: str  # "wikitext" (dumps) or "plain" (pre-extracted sources)
    info: dict  # page id and URL where the source has them; a redirect's target title
    skip: str | None = None  # why the page is not an article ("redirect", "not_article", "too_large")


def local_tag(tag: str) -> str:
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


def not_mediawiki(path, root: str) -> WikiError:
    return WikiError(f"{path}: this XML is not a MediaWiki dump (its root element is <{root}>, "
                     "expected <mediawiki>). Use a *-pages-articles.xml[.bz2] file from "
                     "dumps.wikimedia.org.")


_REDIRECT_LINK = re.compile(r"\[\[([^\[\]|]+)")


def raw_page(elem, url_prefix: str) -> RawPage:
    """A parsed <page> element -> RawPage; namespace-0 pages that are not redirects are articles."""
    fields = {local_tag(c.tag): c for c in elem}
    revision = {local_tag(c.tag): c for c in fields.get("revision", [])}
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


def url_prefix_of(base: str) -> str:
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
            if local_tag(root.tag) != "mediawiki":
                raise not_mediawiki(path, local_tag(root.tag))
            for event, elem in context:
                if event == "end" and local_tag(elem.tag) == "base" and elem.text:
                    url_prefix = url_prefix_of(elem.text)
                if event != "end" or local_tag(elem.tag) != "page":
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
                    try:
                        page = jsonl_page(path, lineno, line)
                    except WikiError as e:  # a damaged .gz decompresses to garbage before its CRC is read
                        raise WikiError(f"{e} In a compressed file this is also what damage looks like: if it was "
                                        "downloaded or copied, do that again." if stream is not raw else str(e))
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
