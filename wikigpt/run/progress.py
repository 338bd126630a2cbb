"""
The progress bar of long work (preparing a dump, building an index, downloading, warming up the
engine): tqdm on a terminal, a few plain lines in a log.
"""
import sys


def progress_bar(iterable=None, **kwargs):
    """tqdm on a terminal. Elsewhere (CI logs, `make demo > log`) tqdm's hundreds of carriage-
    return redraws would pile up in the file: there it prints a plain line every 30 s and one at
    the end instead."""
    from tqdm import tqdm

    out = kwargs.pop("file", None) or sys.stderr
    if out.isatty():
        return tqdm(iterable, file=out, **kwargs)
    return tqdm(iterable, file=_Lines(out), mininterval=30, ascii=True, **kwargs)


class _Lines:
    """A stream for tqdm that turns each redraw into one line of its own."""

    def __init__(self, out):
        self.out = out

    def write(self, text: str):
        text = text.replace("\r", "").rstrip()
        if text:
            self.out.write(text + "\n")

    def flush(self):
        self.out.flush()
