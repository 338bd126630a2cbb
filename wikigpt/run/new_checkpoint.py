"""
A checkpoint saved as a new file, never over one: the outputs of convert.py and prune.py.
"""
import os
import secrets
from pathlib import Path

from wikigpt.checkpoint import save_checkpoint
from wikigpt.cli import UsageError
from wikigpt.run.durable import clear_stale, link_new


def save_new(out: Path, state: dict):
    """save_checkpoint, never over a file: main found no file at `out`, but another run (a second
    convert.py or prune.py to the same path) may have written one since. The checkpoint is saved
    under a name of this run's own, then linked as `out` (link_new). A full disk, like any write
    the disk refuses, is one line; nothing is left under either name."""
    clear_stale(out, ".tmp")  # what runs killed mid-save left: a whole checkpoint each
    own = out.with_name(f"{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        save_checkpoint(own, state)  # fsynced, as is the folder
        link_new(own, out)
    except FileExistsError:
        raise UsageError(f"{out} was written by another run while this one worked: it was left as it is, and "
                         "this run's result was not kept. Choose another path.") from None
    except OSError as e:  # a full disk (save_checkpoint says ENOSPC), a folder gone or read-only
        raise UsageError(f"could not write {out}: {e.strerror or e}. Nothing half-written was left there: make "
                         "room (or fix the folder), then run again.") from None
    finally:
        own.unlink(missing_ok=True)
