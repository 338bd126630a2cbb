"""
prepare_wiki.py's work folder: a hidden folder beside --out, where a run writes everything and
saves its progress (resumed by the same command on the same files), renamed into place only
when the dataset is whole. Every rename here comes after the bytes it names are on disk
(wikigpt/run/durable.py), so neither a crash nor a power cut leaves a dataset that is half there.
One run at a time writes a work folder: it is locked (wikigpt/run/lock.py) from open_work until
the run ends (unlock), so a second run to the same --out is refused instead of writing into the first one's.
"""
import ctypes
import hashlib
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from wikigpt.prep.data import FORMAT_VERSION, atomic_write_json, not_replaceable, read_json_object
from wikigpt.run.durable import fsync_path, fsync_tree, replace_durably
from wikigpt.run.lock import Busy, lock_folder, release
from wikigpt.prep.errors import WikiError
from wikigpt.prep.shards import TOKENIZER_CHARS
from wikigpt.tokenizer import Tokenizer, TokenizerError

PROGRESS = "progress.json"  # in the work folder: what is done, and for which command
_held = {}  # work folder -> the descriptor holding its lock, from open_work to unlock


def fingerprint(files, args) -> dict:
    """What the output depends on: the source files as they are now, and the options."""
    options = {k: getattr(args, k) for k in ("tokenizer", "val_fraction", "seed", "min_chars", "max_articles",
                                             "shard_tokens", "checkpoint_mb")}
    if args.tokenizer != "gpt2" and args.tokenizer_chars != TOKENIZER_CHARS:  # counted where it changes the
        options["tokenizer_chars"] = args.tokenizer_chars  # output: an older version's work folder still resumes
    return {"files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
            "options": options, "format_version": FORMAT_VERSION}


def work_folder(out: Path) -> Path:
    """The hidden folder beside `out` (.NAME.partial), from the resolved path: `--out .` has no name,
    and its parent "." is `out` itself, so the work folder ended up inside it."""
    out = out.resolve()
    return out.parent / f".{out.name}.partial"


def open_work(out: Path, files, args) -> tuple[Path, dict]:
    """The work folder beside `out`, locked for this run, and its saved progress: resumed when it
    was made by the same command on the same source files, started afresh otherwise (only ever
    emptying a folder prepare_wiki.py made). Refused while another run writes there."""
    work = work_folder(out)
    want = fingerprint(files, args)
    fresh = not work.exists()
    if fresh:
        work.mkdir(parents=True, exist_ok=True)  # exist_ok: a run started at the same moment made it
        fsync_path(work.parent)
    elif not work.is_dir():
        raise _not_ours(work, not_replaceable(work))
    _lock(work, out)  # before its progress is read: another run may be writing it
    state = read_json_object(work / PROGRESS)
    if state.get("fingerprint") == want:
        return work, state
    if meta := finished(work, out, want):  # killed after its meta.json, before its publish
        print(f"note: {work} holds this command's finished dataset: publishing it.")
        return work, {"fingerprint": want, "finished": meta}
    if not fresh:
        if looks := not_replaceable(work):
            raise _not_ours(work, looks)
        print(f"note: {work} holds an unfinished run of another command or source; starting over.")
        _empty(work)  # the folder itself stays: it is what holds the lock
    state = {"fingerprint": want}
    atomic_write_json(work / PROGRESS, state)
    return work, state


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def saved_tokenizer(work: Path, digest: str | bool) -> Tokenizer | None:
    """The tokenizer an interrupted run saved in its work folder, if its bytes are still the ones
    whose SHA-256 it noted (`digest`; True: noted by an older version, which kept none); None when
    they are not (bit rot, a disk that filled): the run then trains it again, as it would have.
    Without the digest a flipped bit in a merge could load as another tokenizer, silently."""
    path = work / "tokenizer.json"
    try:
        if digest is True or file_digest(path) == digest:
            return Tokenizer.load(path)
    except (TokenizerError, OSError):
        pass
    print(f"note: {path}, saved by this run before it stopped, is damaged: training the tokenizer again.",
          file=sys.stderr)
    return None


def made_from(want: dict) -> str:
    """fingerprint() as meta.json's "made_from": a digest, so the dataset does not name the
    source's paths, that tells a finished work folder of this command from another's."""
    return hashlib.sha256(json.dumps(want, sort_keys=True).encode()).hexdigest()[:16]


def generation(folder: Path) -> int:
    """meta.json's "generation": one more than the dataset's it replaced (0: none, or an older version's)."""
    g = read_json_object(folder / "meta.json").get("generation", 0)
    return g if isinstance(g, int) else 0


def finished(work: Path, out: Path, want: dict) -> dict | None:
    """The meta.json of a whole dataset this command made in `work` (every file it lists there,
    at its size: progress.json is deleted only after it), newer than `out`: left by a run killed
    before or during its publish, which is all that is left to do. Not newer: publish swaps the
    two folders, so until it deletes it, `work` holds the dataset it replaced."""
    meta = read_json_object(work / "meta.json")
    if not meta or meta.get("made_from") != made_from(want) or generation(work) <= generation(out):
        return None
    files = {p.name: p.stat().st_size for p in work.iterdir() if p.name != "meta.json"}
    return meta if files == meta.get("files") else None


def _lock(work: Path, out: Path):
    """Take the work folder's lock for this run. A lock this process still holds from an earlier
    run of its own (a test's, a notebook's, that failed) is let go first: runs here are one at a time."""
    unlock(work)
    try:
        _held[work] = lock_folder(work)
    except Busy as e:
        raise WikiError(f"another prepare_wiki.py{e.by()} is writing {out} (in {work}): wait for it to "
                        "finish, or stop it (a stopped run continues when its command is run again), "
                        "then run this again. (Nothing was changed.)") from None


def _not_ours(work: Path, looks: str) -> WikiError:
    return WikiError(f"{work}, where this run would work, {looks}: it is not a folder prepare_wiki.py "
                     "made. Move it away, or choose another --out. (Nothing was changed.)")


def _empty(folder: Path):
    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def unlock(work: Path):
    """The run that opened `work` is over, however it ended: its lock goes (a no-op if gone)."""
    release(_held.pop(work, None))


def publish(work: Path, out: Path):
    """The finished work folder becomes `out`, every byte of it on disk first. An old `out`
    (--overwrite) is swapped out in one step where the system can (Linux: renameat2 with
    RENAME_EXCHANGE), so that no moment is without a whole dataset at `out`."""
    out = out.resolve()  # `--out .`: "." cannot be renamed, and has no name to put beside it
    if out == Path.cwd():  # the swap leaves the shell that ran us in the old folder, deleted below
        print(f"note: {out}, the folder this was run in, is replaced by a new one: `cd {out}` to see it.")
    if not out.exists():
        replace_durably(work, out)
        return
    fsync_tree(work)
    if _exchange(work, out):  # work now holds the old dataset
        fsync_path(out.parent)
        shutil.rmtree(work)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    os.rename(work, out)
    fsync_path(out.parent)
    shutil.rmtree(old)


@contextmanager
def not_in_use(out: Path):
    """The dataset folder's lock, which retrieve.py --build holds while it writes the index in it,
    for the swap of publish(): the build would lose its folder mid-write. Refused in one line while
    one runs; the finished work folder is kept, and the same command then only publishes it."""
    if not out.is_dir():
        yield
        return
    try:
        held = lock_folder(out)
    except Busy as e:
        raise WikiError(f"{out} is in use{e.by()}: an index build of it (retrieve.py --build) is running, and the "
                        "new dataset would take its folder away mid-write. Run this again once it has ended: "
                        "the new dataset is kept and only published then.") from None
    try:
        yield
    finally:
        release(held)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):  # no C library to load, or no renameat2 in it
        return False
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE (linux/fs.h)
    return renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0
