"""
prepare_wiki.py's work folder: a hidden folder beside --out, where a run writes everything and
saves its progress (resumed by the same command on the same files), renamed into place only
when the dataset is whole. Every rename here comes after the bytes it names are on disk
(wikigpt/run/durable.py), so neither a crash nor a power cut leaves a dataset that is half there.
"""
import ctypes
import json
import os
import shutil
from pathlib import Path

from wikigpt.prep.data import FORMAT_VERSION, atomic_write_json, not_replaceable
from wikigpt.run.durable import fsync_path, fsync_tree, replace_durably
from wikigpt.prep.errors import WikiError

PROGRESS = "progress.json"  # in the work folder: what is done, and for which command


def fingerprint(files, args) -> dict:
    """What the output depends on: the source files as they are now, and the options."""
    return {"files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
            "options": {k: getattr(args, k) for k in ("tokenizer", "val_fraction", "seed", "min_chars",
                                                      "max_articles", "shard_tokens", "checkpoint_mb")},
            "format_version": FORMAT_VERSION}


def open_work(out: Path, files, args) -> tuple[Path, dict]:
    """The work folder beside `out` and its saved progress: resumed when it was made by the same
    command on the same source files, started afresh otherwise (only ever removing a folder
    prepare_wiki.py made)."""
    work = out.parent / f".{out.name}.partial"
    want = fingerprint(files, args)
    if work.exists():
        try:
            state = json.loads((work / PROGRESS).read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("fingerprint") == want:
            return work, state
        if looks := not_replaceable(work):
            raise WikiError(f"{work}, where this run would work, {looks}: it is not a folder prepare_wiki.py "
                            "made. Move it away, or choose another --out. (Nothing was changed.)")
        print(f"note: {work} holds an unfinished run of another command or source; starting over.")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    fsync_path(work.parent)
    state = {"fingerprint": want}
    atomic_write_json(work / PROGRESS, state)
    return work, state


def publish(work: Path, out: Path):
    """The finished work folder becomes `out`, every byte of it on disk first. An old `out`
    (--overwrite) is swapped out in one step where the system can (Linux: renameat2 with
    RENAME_EXCHANGE), so that no moment is without a whole dataset at `out`."""
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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):  # no C library to load, or no renameat2 in it
        return False
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE (linux/fs.h)
    return renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0
