"""
Downloading a URL source for prepare_wiki.py, resuming a partial download only onto the same file.

A resumed request sends `Range: bytes=N-` with `If-Range:` the validator the server gave when
the download started (its ETag, or its Last-Modified date where it has no strong ETag), saved
beside the partial file in NAME.part.json. The server sends the rest (206) only if the file is
still the one the first N bytes came from; when "latest" was republished in between, it sends
the new file whole (200), and the download starts over instead of splicing new bytes onto old.
A partial file with no saved validator (an older download, or a server that sends neither
header) cannot be checked, so it is started over too.
"""
import json
import re
from pathlib import Path

from wikigpt.run.progress import progress_bar
from wikigpt.run.durable import replace_durably, write_text
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
    import requests

    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / url.rstrip("/").rsplit("/", 1)[-1]
    if dest.is_file():
        print(f"using cached {dest}")
        return dest
    part, saved = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    have, since = _resume_point(url, part, saved)
    headers = {"Range": f"bytes={have}-", "If-Range": since} if have else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=60) as r:
            if r.status_code == 416 and have:  # nothing after byte `have`: whole, or not this file
                if _completed(r, have):
                    return _finish(part, saved, dest)
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
    return _finish(part, saved, dest)


def _finish(part: Path, saved: Path, dest: Path) -> Path:
    replace_durably(part, dest)
    saved.unlink(missing_ok=True)
    return dest
