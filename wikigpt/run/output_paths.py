"""
What may not stand at an output path: checked before a command's work, never by opening it.

Every output is written beside its path and renamed over it (durable.py), so a symbolic link
there would be replaced by a plain file, not written through (and, followed by --overwrite,
could have its target deleted), and a named pipe or a device (/dev/null, as root) replaced by
a plain file. All refused, as is a path under a file, whose folder can never be made. Also here:
the one line a command prints for a read-only or full disk (path_error), a training run's lock
on its out_dir (claim_out_dir), and why a new run may not start in an out_dir (start_new_run).

    if problem := output_path_problem(path, "--out"):
        raise UsageError(problem)
"""
import atexit
import errno
import os
import select
import stat
import sys
from pathlib import Path

from wikigpt.run.lock import Busy, lock_folder
from wikigpt.run.runlog import METRICS, PLOT, RUN_FILES, SUMMARY, written_by_a_run


def odd_entry(path) -> str | None:
    """In words, what stands at `path` if it is neither nothing, a regular file nor a folder: a
    symbolic link (dangling or not), a named pipe, a device or a socket. Looked at with lstat,
    never opened: opening a named pipe blocks until another program opens its other end."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (file_above says why, if a file)
        return None
    if stat.S_ISLNK(mode):
        return f"a symbolic link (to {os.readlink(path)})"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def file_above(path) -> tuple[Path, str] | None:
    """The nearest existing entry above `path` and what it is, when it is no folder (nor a link
    to one): the folders still missing could never be made under it."""
    for above in Path(path).parents:
        if os.path.lexists(above):
            return None if above.is_dir() else (above, odd_entry(above) or "a file")
    return None


def replaced_whole_above(path) -> Path | None:
    """The folder above `path` that training replaces whole at its next save, if any: a sharded
    checkpoint (last.dcp, or its .tmp / .old while one is swapped in: fsdp.swap_in). A file put
    there would be deleted with it."""
    return next((above for above in Path(path).absolute().parents
                 if above.name.endswith((".dcp", ".dcp.tmp", ".dcp.old"))), None)


def output_path_problem(path, option: str) -> str | None:
    """The one-line error (what, where, how to fix) for writing an output at `path`, or None."""
    if there := odd_entry(path):
        fix = ("give the path it points to, or another path" if there.startswith("a symbolic link")
               else "give the path of a regular file or folder")
        return (f"{option} {path} is {there}: an output is written as a new file or folder renamed "
                f"into its place, which would delete it, not write through it; {fix} (nothing was changed).")
    if blocked := file_above(path):
        above, what = blocked
        return (f"{option} {path}: {above} is {what}, where a folder should be: choose another "
                f"{option} (nothing was changed).")
    if folder := replaced_whole_above(path):
        return (f"{option} {path} is inside {folder}, a sharded checkpoint that training replaces whole at its "
                f"next save (what else is in it goes with it): choose a path outside it (nothing was changed).")
    return None


def stdout_reader_left() -> bool:
    """Whether standard output is a pipe whose reader has gone (`... | head -1` after its line):
    poll reports an error on a pipe's write end once its read end is closed."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll on this system, or stdout is no file
        return False


# what a path or a disk says back (not a bug of ours): one line, not a traceback (cli.run_main)
PATH_ERRORS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
               errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ENOTEMPTY}


def path_error(e: OSError) -> str | None:
    """The line a command prints for a read-only folder, a full disk or a file where a folder
    should be; None for other OS errors (a socket, a bug), whose traceback is worth seeing."""
    if e.errno not in PATH_ERRORS:
        return None
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}. Check the path, its permissions and the free space."


def inside_dataset(cfg) -> str | None:
    """Why a new run may not write in its out_dir: it is, or is inside, the dataset folder it
    reads (cfg.data as the run will use it), which prepare_wiki.py --overwrite and retrieve.py
    --build replace whole."""
    out, data = Path(cfg.out_dir).resolve(), Path(cfg.data).resolve()
    if out == data or data in out.parents:
        return (f"out_dir {cfg.out_dir} is inside the dataset folder {cfg.data}, which prepare_wiki.py and "
                "retrieve.py rebuild whole: give an --out_dir outside it.")
    return None


_held = {}  # out_dir -> the lock this process holds on it until it ends


def claim_out_dir(out_dir) -> str | None:
    """Process 0's lock on a training run's out_dir (made if missing, removed at exit if nothing
    was written in it), held until the process ends: a second run started there meanwhile would
    write the same checkpoints and metrics rows, each replacing the other's. The one-line refusal
    naming the running one's pid, or None. Other processes of a torchrun read only."""
    out = Path(out_dir)
    if int(os.environ.get("RANK", "0")) != 0 or out.resolve() in _held:
        return None
    if file := next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None):
        return f"out_dir {out}: {file} is a file, not a folder. Give a folder for the run's checkpoints (--out_dir=...)."
    if not out.is_dir():
        out.mkdir(parents=True, exist_ok=True)
        atexit.register(remove_if_empty, out)
    try:
        _held[out.resolve()] = lock_folder(out)
    except Busy as e:
        return f"another training run is writing in {out}{e.by()}: wait for it to end, or give another --out_dir."
    return None


def remove_if_empty(folder: Path):
    try:
        folder.rmdir()  # only an empty folder goes: a run that was refused leaves nothing behind
    except OSError:
        pass


def start_new_run(cfg, restart: bool = False) -> str | None:
    """Why a new training run (a TrainConfig) may not start in its out_dir: its first save would
    replace a run's checkpoints (a trained model lost to a command run twice: refused unless
    overwrite), or a checkpoint it reads (init_from, teacher; always: LoRA adapters could never
    find their base again). restart: out_dir's best.pt is a run's step 0 alone, killed in its
    first save (fsdp.lost_before_first_save): nothing trained to lose. (With overwrite, the old
    run's last checkpoint goes once the new run has passed every check: runlog.MetricsLog.)"""
    out = Path(cfg.out_dir)
    for option, value in (("init_from", cfg.init_from), ("teacher", cfg.teacher)):
        path = Path(value) if value else None
        if path is not None and path.name in RUN_FILES and path.resolve().parent == out.resolve():
            return f"{option} {path} is in out_dir {out}: this run's first checkpoint would replace it. Give another --out_dir."
    for name in (METRICS, SUMMARY, PLOT):  # also written by a run: a file of the user's of that name is theirs
        if (out / name).exists() and not written_by_a_run(out / name):
            return (f"{out / name} is not a file a wikigpt run wrote, and a run in {out} would replace it: "
                    "give another --out_dir (or move that file away).")
    held = [name for name in RUN_FILES if (out / name).exists() and not (restart and name == "best.pt")]
    if held and not cfg.overwrite:
        return (f"{out} holds a run already ({', '.join(held)}): --resume=true continues it, --overwrite=true "
                "starts a new one in its place (its checkpoints replaced), or give another --out_dir.")
    return None
