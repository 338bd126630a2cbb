"""
Downloading a URL source for prepare_wiki.py, resuming a partial download only onto the same file.

A resumed request sends `Range: bytes=N-` with `If-Range:` the validator the server gave when
the download started (its ETag, or its Last-Modified date where it has no strong ETag), saved
beside the partial file in NAME.part.json. The server sends the rest (206) only if the file is
still the one the first N bytes came from; when "latest" was republished in between, it sends
the new file whole (200), and the download starts over instead of splicing new bytes onto old.
A partial file with no saved validator (an older download, or a server that sends neither
header) cannot be checked, so it is started over too. One run at a time downloads a file into a
cache (NAME.lock): a second waits for it, then uses the file it downloaded.
"""
import fcntl
import json
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from wikigpt.run.lock import holder
from wikigpt.run.progress import progress_bar
from wikigpt.run.durable import replace_durably, write_text
from wikigpt.prep.dumps import HTML, described
from wikigpt.prep.errors import WikiError


def validator(headers) -> str | None:
    """What names this version of the file for If-Range: a strong ETag, else Last-Modified
    (If-Range takes no weak ETag: RFC 9110, 13.1.5)."""
    etag = headers.get("ETag")
    return etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")


def _resume_point(url: str, part: Path, saved: Path) -> tuple[int, str | None]:
    """(bytes to resume from, the validator to send with them); 0 when they cannot be trusted."""
    have = part.stat().st_size if part.exists() else 0
    try:
        record = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    since = record.get("validator") if record.get("url") == url else None
    if have and not since:
        print(f"note: nothing records which version of {url} the {have} bytes in {part} are of "
              "(an older download, or the server sends no ETag or Last-Modified): starting over.")
        return 0, None
    return have, since


def _completed(r, have: int) -> bool:
    """A 416 to a resumed request: whether the partial file is already the whole file."""
    m = re.match(r"bytes \*/(\d+)$", r.headers.get("Content-Range", ""))
    return bool(m) and int(m[1]) == have


def download(url: str, cache_dir: Path) -> Path:
    """Download url into cache_dir, resuming a partial download of the same file (see above)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / url.rstrip("/").rsplit("/", 1)[-1]
    if not dest.is_file():  # (only ever a whole download: _finish renames it into place)
        with one_download(dest, url):
            if not dest.is_file():  # else the run this one waited for finished it
                return _fetch(url, dest)
    if came := unlike_its_name(dest, dest):  # an older version kept whatever the server sent
        raise WikiError(f"{dest}, the cached download of {url}, is {came}, not the {dest.suffix} file its "
                        f"name says (a server's error page, kept by an older version). Delete {dest} and run "
                        "this again to download it anew.")
    print(f"using cached {dest}")
    return dest


# What a source's first bytes are, by its name. A server may answer a missing file or a login with an
# HTML page and status 200; cached, every later run would use it ("using cached") and fail.
MAGIC = {".bz2": b"BZh", ".gz": b"\x1f\x8b", ".parquet": b"PAR1", ".xml": b"<"}


def unlike_its_name(path: Path, name: Path) -> str | None:
    """What the file at `path` is (an HTML page, text...) when it does not start as `name` says
    (MAGIC; an .xml may start with a byte-order mark or blanks, and is no HTML page); None when it
    does, or when the name says nothing (.jsonl, say)."""
    magic = MAGIC.get(name.suffix)
    with open(path, "rb") as f:
        head = f.read(1024)
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    # XML or JSON lines, whatever the name: a server that sends a .gz with Content-Encoding: gzip has it
    # unpacked on the way (requests does), and the readers tell a source by its content
    text = start[:1] in (b"<", b"{") and not HTML.match(start)
    if magic is None or text or (head.startswith(magic) and magic != b"<"):
        return None
    return described(head) if head.strip() else "an empty file"


@contextmanager
def one_download(dest: Path, url: str):
    """Hold DEST.lock (flock) while downloading into DEST.part: a second run downloading the same
    file into the same cache waits for the first, then uses its file. Two at once wrote one .part,
    both renamed it into place: a corrupt dump, cached for good. The lock file stays (tiny): one
    deleted while a run waits on it would let the next run lock a new file beside it."""
    with open(dest.with_name(dest.name + ".lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder(f.name)
            print(f"waiting for another download of {url} into {dest}{f' (pid {pid})' if pid else ''} to finish...",
                  flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:  # ENOLCK, EOPNOTSUPP: some network and FUSE file systems
            print(f"warning: {f.name} cannot be locked ({e.strerror}): a second download of {url} into "
                  f"{dest.parent} at the same time would not wait for this one.", file=sys.stderr)
        yield  # closing the file lets the lock go


def _fetch(url: str, dest: Path) -> Path:
    import requests

    part, saved = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    have, since = _resume_point(url, part, saved)
    headers = {"Range": f"bytes={have}-", "If-Range": since} if have else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=60) as r:
            if r.status_code == 416 and have:  # nothing after byte `have`: whole, or not this file
                if _completed(r, have):
                    return _finish(part, saved, dest, url)
                part.unlink()
                raise WikiError(f"downloading {url}: the {have} bytes in {part} are more than the file "
                                "holds now; they were removed: run the same command again.")
            r.raise_for_status()
            if have and r.status_code != 206:
                print(f"note: {url} changed since the partial download began (or its server ignores "
                      f"ranges): starting over from byte 0 instead of joining two versions.")
                have = 0
            elif have and not r.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                part.unlink()
                raise WikiError(f"downloading {url}: asked for the bytes from {have} on, the server sent "
                                f"{r.headers.get('Content-Range')!r}. The partial download was removed: "
                                "run the same command again.")
            if not have:  # before any byte: what the next run checks a resumed download against
                write_text(saved, json.dumps({"url": url, "validator": validator(r.headers)}))
            total = have + int(r.headers.get("Content-Length", 0)) or None
            with open(part, "ab" if have else "wb") as f, progress_bar(
                    total=total, initial=have, unit="B", unit_scale=True, desc="download") as bar:
                for chunk in r.iter_content(1 << 16):  # a broken connection loses the chunk being read
                    f.write(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as e:
        kept = part.stat().st_size if part.exists() else 0
        if not kept:  # nothing came: no host reached, or it refused; "resumes from 0 bytes" said nothing
            raise WikiError(f"downloading {url} failed before any byte came ({str(e)[:300]}). Check the URL and "
                            "this machine's network, or give a dump file downloaded elsewhere.")
        raise WikiError(f"downloading {url} failed ({str(e)[:300]}). Run the same command again: it resumes "
                        f"from the {kept:,} bytes in {part}.")
    return _finish(part, saved, dest, url)


def _finish(part: Path, saved: Path, dest: Path, url: str) -> Path:
    """The whole download into the cache, if it is what its name says; else it is not kept."""
    if came := unlike_its_name(part, dest):  # (part's name ends in .part)
        part.unlink()
        saved.unlink(missing_ok=True)
        raise WikiError(f"downloading {url}: the server sent {came}, not the {dest.suffix} file the URL names "
                        "(an error or login page, answered as a success?). Nothing was kept in the cache. Check "
                        "the URL (open it in a browser), or download the dump by hand and give its path.")
    replace_durably(part, dest)
    saved.unlink(missing_ok=True)
    return dest
