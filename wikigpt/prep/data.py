"""
The dataset format: what prepare_wiki.py writes and what train.py memory-maps.

A dataset folder holds
    meta.json          counts, source, cleaning settings, tokenizer name; written LAST
    tokenizer.json     the tokenizer spec (see tokenizer.py)
    train_000.bin ...  shards of uint16 token ids
    val_000.bin ...
    articles.jsonl.gz  the cleaned articles, one JSON object a line: title, text, split, and
                       id / url where the source has them (for retrieval and QA; see retrieve.py)
    knowledge.sqlite   the knowledge graph: infobox facts, names, links (see knowledge.py)
    index/             the retrieval index, once retrieve.py has built it

Each shard = a 32-byte header + the tokens:
    magic b"WGPT" | format version u32 | token count u64 | vocab size u32 | 12 zero bytes
so a loader can refuse a truncated, foreign or mismatched file before training on garbage.
"""
import gzip
import hashlib
import io
import json
import os
import re
import resource
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wikigpt.run.durable import write_text
from wikigpt.tokenizer import Tokenizer

ARTICLES = "articles.jsonl.gz"
ARTICLES_GZIP = dict(mtime=0, compresslevel=3)  # no timestamp: the same articles, the same bytes
MAGIC = b"WGPT"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sIQI12x")  # 32 bytes
assert HEADER.size == 32


class DatasetError(ValueError):
    """A dataset folder or shard that cannot be used; the message says how to fix it."""


class ShardFile:
    """A shard written as tokens come (memory stays flat however big the shard); the header's
    token count is filled in by close(), so a shard cut short by a crash fails validation."""

    def __init__(self, path, vocab_size: int):
        self.f, self.vocab_size, self.tokens = open(path, "wb"), vocab_size, 0
        self.f.write(HEADER.pack(b"\0" * 4, FORMAT_VERSION, 0, vocab_size))  # not a shard yet

    def write(self, tokens: np.ndarray):
        assert tokens.dtype == np.uint16
        self.f.write(tokens.tobytes())
        self.tokens += len(tokens)

    def close(self):
        self.f.seek(0)
        self.f.write(HEADER.pack(MAGIC, FORMAT_VERSION, self.tokens, self.vocab_size))
        self.f.flush()
        os.fsync(self.f.fileno())  # on disk before the progress that counts it is saved
        self.f.close()


def open_shard(path, vocab_size: int | None = None) -> np.memmap:
    """Validate a shard's header and size, then memory-map its tokens (read-only)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: shard is missing. Re-run prepare_wiki.py to rebuild the dataset.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
    if len(head) < HEADER.size or head[:4] != MAGIC:
        raise DatasetError(f"{path}: not a wikigpt token shard (bad header). "
                           "Point --data at a folder written by prepare_wiki.py.")
    _, version, n_tokens, shard_vocab = HEADER.unpack(head)
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path}: shard format version {version}, this code reads "
                           f"version {FORMAT_VERSION}. Re-run prepare_wiki.py with this version.")
    if size != HEADER.size + 2 * n_tokens:
        raise DatasetError(f"{path}: truncated or corrupt: header says {n_tokens} tokens "
                           f"({HEADER.size + 2 * n_tokens} bytes) but the file has {size} bytes. "
                           "Re-run prepare_wiki.py with --overwrite.")
    if vocab_size is not None and shard_vocab != vocab_size:
        raise DatasetError(f"{path}: shard vocab size {shard_vocab} != tokenizer's {vocab_size}; "
                           "the folder mixes files from different runs. Rebuild it.")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER.size, shape=(n_tokens,))


@dataclass
class TokenDataset:
    path: Path
    meta: dict
    tokenizer: Tokenizer
    train: list  # list of np.memmap, one per shard
    val: list

    def n_tokens(self, split: str) -> int:
        return sum(len(s) for s in getattr(self, split))


def holds_a_run(folder: Path) -> bool:
    """Whether a folder holds a training run (checkpoints, metrics), which no dataset does."""
    return any(folder.glob("*.pt")) or any(folder.glob("*.dcp")) or (folder / "metrics.jsonl").is_file()


MADE_BY = "prepare_wiki.py"  # meta.json's "made_by": a folder prepare_wiki.py --overwrite may replace
# every name prepare_wiki.py (any version) and retrieve.py put in a dataset or its work folder
DATASET_NAMES = re.compile(r"(meta\.json|tokenizer\.json|articles\.jsonl\.gz|knowledge\.sqlite|(train|val)_\d{3,}\.bin"
                           r"|index|index\.tmp|progress\.json|parts|knowledge-parts|[^/]*\.tmp)")
MODEL_FILES = re.compile(r".*\.(safetensors|pt|pth|ckpt|gguf|onnx)$|config\.json|pytorch_model\.bin")
# what those folders hold: retrieve.py's index (index_build.OWN_ENTRIES and FORMAT_1_ENTRIES, its info
# and progress files' temporaries), the work folder's parts; anything else in them is a user's, kept
INDEX_NAMES = re.compile(r"(wikigpt_index|progress)\.json(\.\d+-[0-9a-f]+\.tmp)?|lead_ids\.i64|passages"
                         r"|passages\.sqlite(-journal|-wal|-shm)?|titles|lead_ids\.npy|corpus\.jsonl|[a-z_.]+\.index\.(npy|json)"
                         r"|corpus\.mmindex\.json")
INNER_NAMES = {"index": INDEX_NAMES, "index.tmp": INDEX_NAMES, "parts": re.compile(r"part-\d{5,}\.jsonl(\.gz|\.tmp)"),
               "knowledge-parts": re.compile(r"\d{5,}\.(jsonl|tmp)")}


def foreign_entries(folder: Path) -> list[str]:
    """The entries of a dataset (or its work folder) that prepare_wiki.py and retrieve.py do not
    write, at the top or in the folders they fill (`index/int8.pt` is a user's: --overwrite
    deleted it with the index)."""
    out = []
    for entry in sorted(folder.iterdir()):
        if not DATASET_NAMES.fullmatch(entry.name):
            out.append(entry.name)
        elif entry.name in INNER_NAMES and entry.is_dir() and not entry.is_symlink():
            out += [f"{entry.name}/{e.name}" for e in sorted(entry.iterdir()) if not INNER_NAMES[entry.name].fullmatch(e.name)]
    return out


def not_replaceable(folder: Path) -> str | None:
    """None when prepare_wiki.py --overwrite may replace folder: an empty one, a dataset it made
    (meta.json's "made_by"), or one an older version made or left half made, told by its files:
    only a dataset's names, and a meta.json of this format, a shard or saved progress among
    them. Anything else: what the folder looks like, for the refusal."""
    if not folder.is_dir():
        return "is a file"
    names = sorted(p.name for p in folder.iterdir())
    if holds_a_run(folder):
        return "holds a training run (checkpoints)"
    meta = _json_or_empty(folder / "meta.json")
    foreign = foreign_entries(folder)
    if not names or (meta.get("made_by") == MADE_BY and not foreign):  # a file put in a dataset it made: kept
        return None
    if not foreign and ({"format_version", "shards", "tokenizer"} <= meta.keys() or "progress.json" in names
                        or any(_is_shard(folder / n) for n in names if n.endswith(".bin") and (folder / n).is_file())):
        return None
    listed = foreign or names
    shown = ", ".join(listed[:6]) + (f" and {len(listed) - 6} more" if len(listed) > 6 else "")
    if any(MODEL_FILES.fullmatch(n) for n in names):
        return f"holds {shown} (a model export, it seems)"
    if foreign:
        return f"holds {shown}, which prepare_wiki.py did not make (move them out first)"
    return f"holds {shown} but no meta.json or shard of a dataset"


def _json_or_empty(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _is_shard(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def refuse_a_run_folder(folder: Path):
    """A training run's folder given where a dataset belongs is said to be one, before any
    advice to rebuild it with prepare_wiki.py --overwrite (which would replace the run)."""
    if holds_a_run(folder):
        raise DatasetError(f"{folder} holds a training run (checkpoints), not a dataset: pass the "
                           "folder prepare_wiki.py wrote, e.g. --data data/demo.")


def refuse_a_foreign_folder(folder: Path):
    """A folder with no meta.json that holds nothing prepare_wiki.py writes (a run's, an index/,
    one of the user's) is said to be no dataset, before any advice to rebuild it."""
    refuse_a_run_folder(folder)
    if not any(folder.glob("*.bin")) and not (folder / "tokenizer.json").exists():
        raise DatasetError(f"{folder} is not a dataset folder (no meta.json, shards or tokenizer): give the folder "
                           "prepare_wiki.py wrote (e.g. --data data/demo).")


def no_such_dataset(folder: Path) -> DatasetError:
    """A folder that is not there: a dataset beside it of a close name is most likely what was meant
    (--data data/dmeo), else it is still to be built."""
    import difflib
    try:
        beside = [p.name for p in folder.parent.iterdir() if (p / "meta.json").is_file()]
    except OSError:  # no such parent, or one we may not read: no suggestion
        beside = []
    near = difflib.get_close_matches(folder.name, beside, n=1)
    if near:
        return DatasetError(f"{folder}: no such folder. Did you mean {folder.parent / near[0]}?")
    return DatasetError(f"{folder}: no such folder. Build the dataset first, e.g. `python prepare_wiki.py --out {folder}`.")


def load_dataset(path) -> TokenDataset:
    """Open a dataset folder written by prepare_wiki.py and validate every shard."""
    path = Path(path)
    meta_path = path / "meta.json"
    if path.exists() and not path.is_dir():
        raise DatasetError(f"{path} is a file, not a dataset folder: give the folder prepare_wiki.py wrote "
                           "(e.g. --data data/demo).")
    if not path.is_dir():
        raise no_such_dataset(path)
    if not meta_path.is_file():
        refuse_a_foreign_folder(path)
        raise DatasetError(f"{path} has no meta.json, so it is not a complete dataset (an "
                           "interrupted prepare_wiki.py run?). Re-run prepare_wiki.py --overwrite.")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{meta_path}: not valid JSON ({e}). Re-run prepare_wiki.py --overwrite.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{meta_path}: dataset format version {meta.get('format_version')}, this "
                           f"code reads version {FORMAT_VERSION}. Re-run prepare_wiki.py.")
    if not (path / "tokenizer.json").is_file():  # a folder copied without it, or an older version's
        raise DatasetError(f"{path} has no tokenizer.json, without which its token ids mean nothing: copy it "
                           "from where the dataset was made, or re-run prepare_wiki.py --overwrite.")
    tok = Tokenizer.load(path / "tokenizer.json")
    # each shard mapped below holds a file descriptor all run (np.memmap's mmap keeps a dup of it): raise the
    # soft limit on open files (often 1,024) to the shards + 1,024 for everything else, up to the hard limit
    n_shards = len(meta["shards"]["train"]) + len(meta["shards"]["val"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n_shards + 1024:
        if hard < n_shards + 64:
            raise DatasetError(f"{path} has {n_shards} shards, each an open file all run, but the limit on open files "
                               f"is {hard}: raise it (`ulimit -n {n_shards + 1024}`) or rebuild with a larger --shard_tokens.")
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(n_shards + 1024, hard), hard))
        except (ValueError, OSError):  # a cap the hard limit does not show (macOS's maxfilesperproc): as it was
            pass
    splits = {}
    for split in ("train", "val"):
        shards = [open_shard(path / name, tok.n_vocab) for name in meta["shards"][split]]
        if sum(len(s) for s in shards) == 0:
            raise DatasetError(f"{path}: the {split} split is empty. Use a larger source.")
        splits[split] = shards
    return TokenDataset(path, meta, tok, splits["train"], splits["val"])


def atomic_write_json(path, obj):
    """The file whole or not at all, and on disk (durable.py: fsync, rename, fsync the folder)."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False))


def read_json_object(path: Path) -> dict:
    """A file's JSON object, or {} where it is missing, cut short or not an object (a progress or
    info file a kill may have left behind)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# meta.json's fields that say where and when a dataset was made, not what it holds
PROVENANCE = ("source", "made_from", "seconds", "generation")


def dataset_fingerprint(folder) -> str | None:
    """What a dataset folder holds, as a digest of its meta.json less PROVENANCE: every file's size,
    each split's articles, chars, bytes and tokens, the tokenizer, seed and options. The same for
    a copy of the folder, or the same dump made again from another path ("made_from" differs then:
    it digests the source's path and mtime); datasets with other articles in a split differ. None
    without a folder or a readable meta.json."""
    meta = _json_or_empty(Path(folder) / "meta.json") if folder else {}
    if not meta:
        return None
    held = {k: v for k, v in meta.items() if k not in PROVENANCE}
    return hashlib.sha256(json.dumps(held, sort_keys=True).encode()).hexdigest()[:16]


def same_dataset(recorded: str, folder) -> bool | None:
    """Is `folder` the dataset a checkpoint recorded (`recorded`: the path its run was given, often
    relative to where it trained)? Told by what the two hold, not by their paths (a copy is the same
    dataset); None when that cannot be told: `recorded` is not found from here, or holds no meta.json."""
    theirs, ours = dataset_fingerprint(recorded), dataset_fingerprint(folder)
    if theirs and ours:
        return theirs == ours
    return True if recorded and Path(recorded).resolve() == Path(folder).resolve() else None


# ----------------------------------------------------------------------------------------
# Kept articles: gzip'd JSON lines, read as a stream (a whole Wikipedia never sits in memory)

@contextmanager
def open_articles_for_writing(path):
    """A text file that gzips as it goes; mtime 0 and no name in the header, so the same
    articles always give the same bytes. Level 3: ~4x smaller than the text, and fast."""
    with (open(path, "wb") as raw,
          gzip.GzipFile(filename="", mode="wb", fileobj=raw, **ARTICLES_GZIP) as gz,
          io.TextIOWrapper(gz, encoding="utf-8") as text):
        yield text


def read_articles(folder, split: str | None = None):
    """Yield the kept articles of a dataset folder (dicts: title, text, split, id?, url?)."""
    folder = Path(folder)
    path = folder / ARTICLES
    if not folder.is_dir():
        raise no_such_dataset(folder)
    if not path.is_file():
        if not (folder / "meta.json").is_file():
            refuse_a_foreign_folder(folder)
        raise DatasetError(f"{folder} has no kept articles ({ARTICLES}): it was made by an older "
                           f"prepare_wiki.py. Rebuild it with the same source and options plus "
                           f"--overwrite, e.g. `python prepare_wiki.py --out {folder} --overwrite`.")
    line_no = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                row = json.loads(line)
                if split is None or row["split"] == split:
                    yield row
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as e:  # cut short, bit rot, not ours
        what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise DatasetError(f"{path} is damaged after {line_no:,} articles ({what}): it is the dataset's only copy of "
                           "its articles, so rebuild the dataset: the same prepare_wiki.py command plus --overwrite."
                           ) from None
