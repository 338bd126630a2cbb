"""
Files that appear whole or not at all, even across a power cut.

A rename is atomic, but without fsync the kernel may write the new name to disk before the new
file's bytes: after a crash the name points at a short or empty file. So every save here is
    write a temporary file beside the target -> fsync it -> rename over the target -> fsync the folder
and a crash at any point leaves either the old file or the new one.

    with replacing(path) as tmp:         # any writer that takes a path
        torch.save(state, tmp)
    write_text(path, json.dumps(report))  # small text files (reports, summaries)
    link_new(tmp, path)                   # a new file only: never over one another run wrote meanwhile

And a file read back is the one written: failed_checksum reads a torch.save archive's checksums.
"""
import errno
import glob
import os
import re
import secrets
import zipfile
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path) -> None:
    """Flush a file's bytes, or a folder's entries (names), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder) -> None:
    """Every file under a folder, then every folder (deepest first): before a folder is renamed
    into place, all of it is on disk."""
    folders = []
    for root, _, files in os.walk(folder):
        folders.append(root)
        for name in files:
            fsync_path(os.path.join(root, name))
    for root in reversed(folders):
        fsync_path(root)


def replace_durably(tmp, dest) -> None:
    """Rename a finished temporary file or folder over dest, with its bytes and the rename on disk."""
    tmp, dest = Path(tmp), Path(dest)
    if tmp.is_dir():
        fsync_tree(tmp)
    else:
        fsync_path(tmp)
    os.replace(tmp, dest)
    fsync_path(dest.parent)


@contextmanager
def replacing(path, suffix: str = ".tmp"):
    """Yield a temporary path beside `path`; when the block ends without an error, that file
    replaces `path` durably; on an error it is removed and `path` is untouched. The temporary
    name is this writer's own: two processes saving one path (two eval runs' report.json) each
    write their own file and the last rename wins, instead of writing into or renaming the other's."""
    path = Path(path)
    clear_stale(path, suffix)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
        replace_durably(tmp, path)
    finally:
        if tmp.is_file():
            tmp.unlink()


def link_new(src: Path, dest: Path):
    """A finished file (fsynced) becomes `dest` too, only if nothing is there: a link fails where
    anything exists (FileExistsError), where a rename would replace it and another run's file would
    be lost. The caller removes `src`. A file system without hard links (FAT) gets a check, then a rename."""
    try:
        os.link(src, dest)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):  # (two numbers on macOS)
            raise
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dest)) from None
        os.rename(src, dest)
    fsync_path(dest.parent)


def dead_writers_temps(folder: Path, name: str, suffix: str) -> list[Path]:
    """The temporary files in `folder` of writers of `name` that died mid-save (SIGKILL, the OOM
    killer: no `finally` ran): names of the exact form `NAME.PID-8HEX` + suffix (replacing()'s,
    export.py's) whose process is gone. A user's `NAME.2024-12-01.tmp` is no writer's: kept."""
    own = re.compile(rf"{re.escape(name)}\.(\d+)-[0-9a-f]{{8}}{re.escape(suffix)}")
    return [p for p in folder.glob(f"{glob.escape(name)}.*-*{suffix}")
            if (m := own.fullmatch(p.name)) and not alive(int(m[1]))]


def clear_stale(path: Path, suffix: str) -> None:
    """Delete what dead writers of `path` left beside it, each up to a whole checkpoint; a live
    writer's stays."""
    for old in dead_writers_temps(path.parent, path.name, suffix):
        old.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def write_bytes(path, data: bytes) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def failed_checksum(path) -> str | None:
    """The first entry of a torch.save archive whose bytes fail the CRC-32 written with it, or None:
    torch.load checks none, and a bit flipped on a disk or in a copy loaded silently. Read just before
    torch.load, which then reads the file from the page cache (docs/training.md: 0.21 s for 0.5 GB)."""
    try:
        z = zipfile.ZipFile(path)
    except Exception:  # not an archive zipfile can read at all: torch.load's own error says what is wrong
        return None
    with z:
        for entry in z.infolist():
            if not entry.CRC and entry.file_size:
                continue  # saved without checksums (torch's compute_crc32=False): nothing to check
            try:
                with z.open(entry) as f:  # a local header that disagrees with the directory raises here:
                    while f.read(1 << 24):  # torch.load would read the data from where that header says
                        pass
            except (zipfile.BadZipFile, EOFError, NotImplementedError, UnicodeDecodeError, RuntimeError):
                return entry.filename  # (BadZipFile too when what was read does not give the CRC-32 written)
    return None


def writer_error(e: RuntimeError, path) -> Exception:
    """torch's zip writer (inline_container) raises RuntimeError for the OS's errors: one that names
    its cause ("open file failed with strerror: Permission denied") becomes that OSError; a short
    write without one ("unexpected pos ...") is what a full disk gave."""
    if "inline_container" not in str(e):
        return e
    if said := re.search(r"strerror: ([^,\n]+)", str(e)):
        code = next((n for n in errno.errorcode if os.strerror(n) == said[1].strip()), errno.EIO)
        return OSError(code, os.strerror(code) if code != errno.EIO else said[1].strip(), str(path))
    return OSError(errno.ENOSPC, "No space left on device? (the write stopped short)")
