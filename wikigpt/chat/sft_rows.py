"""
Chat rows: conversations tokenized once into memory-mapped rows (tokens + loss mask, cut at
turn boundaries), packed into block_size windows for training and for the fixed val set.
Only the assistant's tokens and its end-of-turn token are learned (mask 1).
"""
import hashlib
import itertools
import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from wikigpt.batches import SeededOrder, to_device
from wikigpt.chat.chat_template import Message, render_chat
from wikigpt.cli import UsageError
from wikigpt.chat.sft_config import SFTConfig
from wikigpt.run.durable import alive, replace_durably
from wikigpt.knowledge.retrieval import Index
from wikigpt.chat.sft_data import BUILTIN_WEIGHTS, conversation_sources, is_val, parse_sft_data, split_hash
from wikigpt.tokenizer import Tokenizer


def rows_of(tok: Tokenizer, conv: list[Message], max_len: int, cuts: Counter):
    """Conversation -> training rows (ids, mask) of at most max_len tokens, cut at turn
    boundaries; each row repeats the system turn and starts with the document separator.
    Every row has at least one supervised token, by construction. `cuts` counts what did
    not fit: split conversations, shortened answers, dropped exchanges."""
    system = conv[:1] if conv[0].role == "system" else []
    dialogue = conv[len(system):]
    exchanges = [dialogue[i:i + 2] for i in range(0, len(dialogue), 2)]
    head_ids, head_mask = render_chat(tok, system)
    head_ids, head_mask = [tok.doc_sep] + head_ids, [0] + head_mask
    if len(head_ids) >= max_len:
        cuts["system turn longer than the context: conversation dropped"] += 1
        return
    ids, mask = list(head_ids), list(head_mask)
    for ex in exchanges:
        ex_ids, ex_mask = render_chat(tok, ex)
        if len(ids) + len(ex_ids) > max_len and len(ids) > len(head_ids):  # row full: emit it
            cuts["conversations split into several rows"] += 1
            yield ids, mask
            ids, mask = list(head_ids), list(head_mask)
        if len(ids) + len(ex_ids) > max_len:  # one exchange alone is too long: cut its answer
            ex_ids, ex_mask = ex_ids[:max_len - len(ids)], ex_mask[:max_len - len(ids)]
            if not any(ex_mask):
                cuts["questions longer than the context: exchange dropped"] += 1
                continue
            cuts["answers cut to fit the context"] += 1
        ids, mask = ids + ex_ids, mask + ex_mask
    if any(mask):
        yield ids, mask


@dataclass
class TokenRows:
    """Rows stored as one token array + one mask array + row offsets, all memory-mapped."""
    tokens: np.ndarray  # uint16
    mask: np.ndarray  # uint8
    offsets: np.ndarray  # int64, len = rows + 1

    def __len__(self):
        return len(self.offsets) - 1

    def row(self, i):
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.tokens[a:b], self.mask[a:b]

    @classmethod
    def open(cls, folder: Path, split: str):
        return cls(np.memmap(folder / f"{split}_tokens.bin", dtype=np.uint16, mode="r"),
                   np.memmap(folder / f"{split}_mask.bin", dtype=np.uint8, mode="r"),
                   np.load(folder / f"{split}_offsets.npy"))


@dataclass
class SplitCounts:
    """What one split holds (meta.json): rows, their tokens, the tokens learned (mask 1)."""
    rows: int = 0
    tokens: int = 0
    supervised_tokens: int = 0

    def add(self, ids: list[int], mask: list[int]):
        self.rows += 1
        self.tokens += len(ids)
        self.supervised_tokens += sum(mask)


def grounded_index(cfg: SFTConfig) -> Index | None:
    """The retrieval index of `data` when grounded QA conversations join the mix, else None."""
    return Index.open(cfg.data) if cfg.grounded_qa else None


def split_rows(cfg: SFTConfig, tok: Tokenizer, block_size: int, index, skipped: list, cuts: Counter):
    """(split, ids, mask) of every row, in the order they are stored: each conversation's split
    decided by its hash, a train one's rows repeated by its source's weight."""
    conv_index = 0
    for weight, conversations in conversation_sources(cfg, skipped, tok, block_size, index):
        for conv in conversations:
            h = split_hash(cfg.seed, conv_index)
            conv_index += 1
            split = "val" if is_val(h, cfg.sft_val_fraction) else "train"
            # weight: repeat whole conversations (val: once) - 2.5 means 2 or 3 times
            repeats = 1 if split == "val" else int(weight) + ((h >> 20) % 1000 < 1000 * (weight % 1))
            for ids, mask in rows_of(tok, conv, block_size + 1, cuts):
                for _ in range(repeats):
                    yield split, ids, mask


def first_train_rows(cfg: SFTConfig, tok: Tokenizer, block_size: int, n: int) -> list[tuple[list, list]]:
    """The first n train rows (ids, mask) that tokenize_dialogues would store, tokenized in memory
    and only as far as needed: what --show_examples prints, with nothing written anywhere."""
    rows = (row for split, *row in split_rows(cfg, tok, block_size, grounded_index(cfg), [], Counter())
            if split == "train")
    return list(itertools.islice(rows, n))


def tokenize_dialogues(cfg: SFTConfig, tok: Tokenizer, block_size: int) -> Path:
    """Tokenize every conversation once into out_dir/sft_tokens-<hash>/; reused while the
    inputs (files, settings, tokenizer) are unchanged. Written to a temporary folder first."""
    paths = [path for path, _ in parse_sft_data(cfg.sft_data)]
    index = grounded_index(cfg)
    grounded = [cfg.grounded_qa, index.info] if index else []  # the info holds its articles' fingerprint
    key = json.dumps([cfg.sft_data or BUILTIN_WEIGHTS, cfg.sft_format, cfg.system_prompt, cfg.sft_val_fraction,
                      cfg.seed, block_size, tok.spec.get("kind"), tok.n_vocab, grounded,
                      [(str(p), p.stat().st_size, p.stat().st_mtime) for p in paths if p.is_file()]])
    key = hashlib.sha256(key.encode() + json.dumps(tok.spec).encode()).hexdigest()[:12]
    folder = Path(cfg.out_dir) / f"sft_tokens-{key}"
    clear_dead_tmp(folder.parent)
    if (folder / "meta.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        skipped, counts = [], {"train": SplitCounts(), "val": SplitCounts()}
        writers = {s: (open(tmp / f"{s}_tokens.bin", "wb"), open(tmp / f"{s}_mask.bin", "wb"))
                   for s in ("train", "val")}  # rows are streamed to disk, never all in RAM
        offsets = {"train": [0], "val": [0]}
        cuts = Counter()
        for split, ids, mask in split_rows(cfg, tok, block_size, index, skipped, cuts):
            tokens_file, mask_file = writers[split]
            np.array(ids, dtype=np.uint16).tofile(tokens_file)
            np.array(mask, dtype=np.uint8).tofile(mask_file)
            offsets[split].append(offsets[split][-1] + len(ids))
            counts[split].add(ids, mask)
        for handle in (handle for pair in writers.values() for handle in pair):
            handle.close()
        if skipped:
            print(f"skipped {len(skipped)} malformed record(s), e.g. {', '.join(skipped[:5])}")
        for what, n in sorted(cuts.items()):  # long conversations: say what was done to them
            print(f"context of {block_size} tokens: {n:,} {what}")
        for split, offs in offsets.items():
            if len(offs) == 1:
                raise UsageError(f"no {split} conversations: give more dialogue data"
                                 + (" or a larger sft_val_fraction." if split == "val" else "."))
            np.save(tmp / f"{split}_offsets.npy", np.array(offs, dtype=np.int64))
        meta = {split: asdict(c) for split, c in counts.items()}
        meta["skipped_records"] = len(skipped)
        meta["cuts"] = dict(cuts)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        replace_durably(tmp, folder)  # rows and meta.json on disk before the folder has its name
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def clear_dead_tmp(out_dir: Path):
    """Delete the temporary folders of tokenizing runs that were killed (kill -9, the OOM killer:
    no `finally` ran), each a partial copy of the tokenized dialogues; a live run's stays."""
    for old in out_dir.glob("sft_tokens-*.tmp-*"):
        pid = old.name.rsplit("-", 1)[1]
        if pid.isdigit() and not alive(int(pid)) and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def pack(rows: TokenRows, order, start: int, block_size: int):
    """Greedily pack whole rows, in `order` from `start`, into one sequence of at most
    block_size + 1 tokens. Returns (tokens, mask, next start). Packing (instead of padding
    each row to the longest) keeps most of the batch busy; rows in one window can see the
    rows before them, the price usually paid for packing."""
    toks, masks, used, i = [], [], 0, start
    while i < len(order):
        t, m = rows.row(int(order[i]))
        if used + len(t) > block_size + 1 and used > 0:
            break
        toks.append(t)
        masks.append(m)
        used += len(t)
        i += 1
    return np.concatenate(toks), np.concatenate(masks), i


def to_xy(tokens, mask, block_size: int):
    """Packed tokens + mask -> (x, y) of length block_size; y = -1 where nothing is learned."""
    x = np.zeros(block_size, dtype=np.int64)
    y = np.full(block_size, -1, dtype=np.int64)
    n = len(tokens) - 1
    x[:n] = tokens[:-1]
    y[:n] = np.where(mask[1:] == 1, tokens[1:].astype(np.int64), -1)
    return x, y


class SFTBatches(SeededOrder):
    """Same contract as PretrainBatches (next_batch, state_dict, load_state_dict), over packed
    dialogue rows: the rows take the windows' place in the seeded order. All processes pack the
    same global stream of windows and process r keeps windows r, r+W, ...; so the (epoch,
    cursor) state is one for all and resume is exact."""

    def __init__(self, rows: TokenRows, block_size, batch_size, seed, rank=0, world=1, device="cpu"):
        super().__init__(len(rows), block_size, batch_size, seed, rank, world, device)
        self.rows = rows

    def next_batch(self):
        xs, ys = [], []
        for k in range(self.B * self.world):
            if self.cursor >= len(self.rows):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
            tokens, mask, self.cursor = pack(self.rows, self.order(), self.cursor, self.T)
            if k % self.world == self.rank:
                x, y = to_xy(tokens, mask, self.T)
                xs.append(x)
                ys.append(y)
        return to_device(torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), self.device)


def val_set(rows: TokenRows, block_size: int, max_tokens: int):
    """The held-out rows, packed in order, up to max_tokens: the fixed (x, y) val set."""
    xs, ys, start, order = [], [], 0, np.arange(len(rows))
    while start < len(rows) and len(xs) * block_size < max_tokens:
        tokens, mask, start = pack(rows, order, start, block_size)
        x, y = to_xy(tokens, mask, block_size)
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
