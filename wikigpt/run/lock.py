"""
One writer at a time in a folder: an advisory lock (flock) on the folder itself, taken before a
command writes there and held while it does. Two runs into one folder used to interleave their
writes (a corrupt work folder, two tracebacks); now the second is refused at once. The kernel
drops the lock when its process ends, however it ends (kill -9, the OOM killer), so a lock is
never left stale, and locking the folder rather than a file beside it leaves nothing behind.
A refusal names the holder's pid, which Linux lists in /proc/locks.

    fd = lock_folder(work)         # Busy(pid) if another process holds it
    ...
    release(fd)

    with folder_locked(dataset):   # the same, for one block
        ...
"""
import fcntl
import os
import sys
from contextlib import contextmanager


class Busy(Exception):
    """Another process holds the folder's lock; `pid` is its id (None where the system does not say)."""

    def __init__(self, folder, pid: int | None):
        super().__init__(f"{folder} is locked by {'pid ' + str(pid) if pid else 'another process'}")
        self.pid = pid

    def by(self) -> str:
        """' (pid N)', or '' where the holder is not known: for the command's own message."""
        return f" (pid {self.pid})" if self.pid else ""


def lock_folder(folder) -> int | None:
    """An open descriptor of `folder` holding its exclusive lock; Busy if another holds it; None
    (with a warning) where the file system has no locks: the command runs as it did before them."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # never waits: a second writer is a mistake to report
    except BlockingIOError:
        os.close(fd)
        raise Busy(folder, holder(folder)) from None
    except OSError as e:  # ENOLCK, EOPNOTSUPP: some network and FUSE file systems
        os.close(fd)
        print(f"warning: {folder} cannot be locked ({e.strerror}): a second run writing there at the same "
              "time would not be refused.", file=sys.stderr)
        return None
    return fd


def release(fd: int | None):
    if fd is None:
        return
    # unlocked before it is closed: worker processes forked meanwhile share the descriptor, and
    # a lock stays held until every copy of it is closed
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextmanager
def folder_locked(folder):
    fd = lock_folder(folder)
    try:
        yield
    finally:
        release(fd)


def holder(folder) -> int | None:
    """The pid holding a flock on `folder`, from Linux's /proc/locks; None elsewhere, or when it
    let go meanwhile. A line: '1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146323 0 EOF' (the last
    field of the device is the inode; the device numbers differ under overlay file systems)."""
    try:
        inode = str(os.stat(folder).st_ino)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == inode:
            return int(fields[4])
    return None
