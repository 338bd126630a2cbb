"""
Chat fine-tuning (SFT): teach a pretrained Wiki-GPT to answer in turns.

    python chat_sft.py config/sft_demo.toml                        # built-in dialogues (en + zh)
    python chat_sft.py config/sft_demo.toml --sft_data=my.jsonl,alpaca.json:0.5
    python chat_sft.py config/sft_demo.toml --show_examples=2      # look at rows and loss masks
    torchrun --standalone --nproc_per_node=8 chat_sft.py config/sft_demo.toml --init_from=...

Dialogue files (JSONL, or a JSON array), format detected per record or forced by sft_format:
    openai    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}
    sharegpt  {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}]}
    alpaca    {"instruction": "...", "input": "...", "output": "..."}
    pairs     {"prompt": "...", "response": "..."}
The model learns only the assistant's tokens and its end-of-turn token (see tokenizer.py).
Training itself is train.py's loop; this file only supplies the dialogue batches.
"""
import hashlib
import importlib.util
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from cli import UsageError, load_config, opt, run_main
import wikiqa
from retrieve import Index
from tokenizer import ASSISTANT, Message, Tokenizer, render_chat, show_mask
from train import (PretrainBatches, TrainConfig, batch_plan, resolve_resume, setup_dist, starting_checkpoint,
                   to_device, train)

ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
                "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant"}


@dataclass
class SFTConfig(TrainConfig):
    # defaults for fine-tuning (the model's shape comes from init_from)
    out_dir: str = opt("out/chat", "where last.pt and best.pt are written")
    init_from: str = opt("out/demo/best.pt", "the pretrained checkpoint to fine-tune")
    lr: float = opt(1e-3, "peak AdamW learning rate")
    max_steps: int = opt(300, "optimizer steps")
    warmup_steps: int = opt(20, "linear warmup steps")
    eval_interval: int = opt(50, "evaluate and checkpoint every this many steps")
    eval_tokens: int = opt(16384, "size of the fixed val subset, in tokens")
    # dialogue data
    sft_data: str = opt("", "comma-separated files, each optionally :weight (empty: built-in en+zh)")
    sft_format: str = opt("auto", "auto | openai | sharegpt | alpaca | pairs")
    system_prompt: str = opt("", "system turn added to conversations that have none")
    sft_val_fraction: float = opt(0.05, "share of conversations held out for val")
    skip_bad_records: bool = opt(False, "skip malformed records (and say how many) instead of failing")
    show_examples: int = opt(0, "print this many training rows with their loss mask, then exit")
    eot_check: int = opt(50, "after training, how many held-out prompts to test for <|end|>")
    # knowledge: questions about the articles of `data`, answered from retrieved passages
    grounded_qa: float = opt(0.0, "weight of grounded Wikipedia QA conversations (wikiqa.py; 0: off)")
    qa_eval: int = opt(3, "with grounded_qa: held-out QA questions per val article, reported at the end")

    def validate(self):
        super().validate()
        if self.sft_format not in ("auto", "openai", "sharegpt", "alpaca", "pairs"):
            raise UsageError(f"config: sft_format: unknown {self.sft_format!r}")
        if not 0 < self.sft_val_fraction < 1:
            raise UsageError(f"config: sft_val_fraction must be in (0, 1), got {self.sft_val_fraction}")
        if self.grounded_qa < 0 or self.qa_eval < 0:
            raise UsageError("config: grounded_qa and qa_eval must be >= 0")


# ----------------------------------------------------------------------------------------
# Reading dialogue files into conversations (lists of Message)

class BadRecord(ValueError):
    pass


def _turns(record: dict, fmt: str) -> list[Message]:
    """One record in any supported format -> messages (roles not yet checked)."""
    if fmt == "auto":
        fmt = next((f for f, key in (("openai", "messages"), ("sharegpt", "conversations"),
                                     ("alpaca", "instruction"), ("pairs", "prompt")) if key in record), None)
        if fmt is None:
            raise BadRecord(f"unknown format: keys {sorted(record)[:6]}; expected messages, "
                            "conversations, instruction/output or prompt/response")
    try:
        if fmt == "openai":
            return [Message(str(m["role"]), m["content"]) for m in record["messages"]]
        if fmt == "sharegpt":
            return [Message(str(m["from"]), m["value"]) for m in record["conversations"]]
        if fmt == "alpaca":
            prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
            return [Message("user", prompt), Message("assistant", record["output"])]
        return [Message("user", record["prompt"]), Message("assistant", record["response"])]
    except (KeyError, TypeError) as e:
        raise BadRecord(f"{fmt} record is missing a field ({e})")


def check_conversation(messages: list[Message], system_prompt: str) -> list[Message]:
    """Normalise roles, then demand: optional system, then user/assistant alternating,
    starting with user, no empty assistant turn, at least one assistant turn."""
    out = []
    for i, m in enumerate(messages):
        role = ROLE_ALIASES.get(m.role.strip().lower())
        if role is None:
            raise BadRecord(f"turn {i + 1}: unknown role {m.role!r} (use system, user or assistant)")
        if not isinstance(m.content, str):
            raise BadRecord(f"turn {i + 1}: content must be text, got {type(m.content).__name__}")
        if role == "system" and i > 0:
            raise BadRecord(f"turn {i + 1}: a system turn may only come first")
        out.append(Message(role, m.content.strip()))
    if system_prompt and (not out or out[0].role != "system"):
        out.insert(0, Message("system", system_prompt))
    dialogue = out[1:] if out and out[0].role == "system" else out
    for i, m in enumerate(dialogue):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise BadRecord(f"roles must alternate user/assistant starting with user; turn "
                            f"{i + 1 + len(out) - len(dialogue)} is {m.role}, expected {expected}")
        if m.role == "assistant" and not m.content:
            raise BadRecord(f"turn {i + 1 + len(out) - len(dialogue)}: empty assistant turn")
    if dialogue and dialogue[-1].role == "user":
        out.pop()  # a last question with no answer teaches nothing
    if not any(m.role == "assistant" for m in out):
        raise BadRecord("no assistant turn")
    return out


def read_dialogues(path: Path, cfg: SFTConfig, skipped: list):
    """Yield conversations from a JSONL file (or a JSON array), naming file and line on error."""
    if not path.is_file():
        raise UsageError(f"dialogue file {path} not found.")
    raw = path.read_bytes()
    if raw.lstrip()[:1] == b"[":  # a JSON array
        try:
            records = list(enumerate(json.loads(raw.decode("utf-8")), 1))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"{path}: not valid JSON ({e}).")
        where = "item"
    else:
        records, where = [], "line"
        for lineno, line in enumerate(raw.split(b"\n"), 1):
            if line.strip():
                try:
                    records.append((lineno, json.loads(line.decode("utf-8"))))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    records.append((lineno, BadRecord(f"not valid JSON ({e})")))
    for n, record in records:
        try:
            if isinstance(record, Exception):
                raise record
            if not isinstance(record, dict):
                raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
            yield check_conversation(_turns(record, cfg.sft_format), cfg.system_prompt)
        except BadRecord as e:
            if not cfg.skip_bad_records:
                raise UsageError(f"{path}, {where} {n}: {e}. Fix the record, or pass "
                                 "--skip_bad_records=true to skip such records.")
            skipped.append(f"{path}:{n}")


def builtin_dialogues(system_prompt: str):
    """chitchat-dataset (7,168 English conversations, ~4,000 with a reply) and chatterbot-corpus (en + zh), both
    shipped on PyPI. Consecutive messages of one speaker are one turn; speakers alternate."""
    import yaml

    def pkg_dir(name):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise UsageError(f"the built-in dialogues need `pip install {name.replace('_', '-')}` "
                             "(or pass your own files with --sft_data).")
        return Path(spec.origin).parent

    chitchat = json.loads((pkg_dir("chitchat_dataset") / "dataset.json").read_text(encoding="utf-8"))
    convs = []
    for key in sorted(chitchat):
        turns = [" ".join(m["text"].strip() for m in turn) for turn in chitchat[key]["messages"]]
        convs.append(("chitchat", turns))
    for lang in ("english", "chinese"):
        for f in sorted((pkg_dir("chatterbot_corpus") / "data" / lang).glob("*.yml")):
            for turns in yaml.safe_load(f.read_text(encoding="utf-8")).get("conversations", []):
                convs.append((f"chatterbot-{lang}", [str(t) for t in turns]))
    for source, turns in convs:
        messages = [Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)]
        try:
            yield source, check_conversation(messages, system_prompt)
        except BadRecord:
            continue  # e.g. a one-line "conversation": nothing to learn


BUILTIN_WEIGHTS = {"chitchat": 0.5, "chatterbot-english": 2.0, "chatterbot-chinese": 10.0}


def conversation_sources(cfg: SFTConfig, skipped: list, tok: Tokenizer, block_size: int, index=None):
    """(weight, iterable of conversations) per source. The built-in mix: chitchat's long
    conversations would fill ~85% of the rows; half of them, chatterbot's English twice and
    its 467 Chinese ones 10x give each language a real share of the batches. With an index
    (grounded_qa), questions about the train articles of `data` join with that weight."""
    if not cfg.sft_data:
        groups = {}
        for source, conv in builtin_dialogues(cfg.system_prompt):
            groups.setdefault(source, []).append(conv)
        sources = [(BUILTIN_WEIGHTS[s], convs) for s, convs in groups.items()]
    else:
        sources = [(w, read_dialogues(path, cfg, skipped)) for path, w in parse_sft_data(cfg.sft_data)]
    if index is not None:
        sources.append((cfg.grounded_qa, wikiqa.grounded_conversations(cfg.data, index, tok, block_size, cfg.seed)))
    return sources


def split_hash(seed: int, conv_index: int) -> int:
    """A stable 64-bit hash of a conversation's place in the sources: it decides the split."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{conv_index}".encode(), digest_size=8).digest(), "big")


def is_val(h: int, val_fraction: float) -> bool:
    return (h % 10**6) / 10**6 < val_fraction


def heldout_conversations(cfg: SFTConfig, tok: Tokenizer, block_size: int):
    """The dialogue conversations a run with this config held out for val (the grounded QA
    ones, which come last, are left out: wikiqa.evaluate has its own held-out articles)."""
    convs = (c for _, group in conversation_sources(cfg, [], tok, block_size) for c in group)
    for i, conv in enumerate(convs):
        if is_val(split_hash(cfg.seed, i), cfg.sft_val_fraction):
            yield conv


def parse_sft_data(spec: str) -> list[tuple[Path, float]]:
    """'a.jsonl,b.json:0.5' -> [(a.jsonl, 1.0), (b.json, 0.5)]."""
    out = []
    for item in filter(None, (i.strip() for i in spec.split(","))):
        path, colon, weight = item.rpartition(":")
        try:
            out.append((Path(path), float(weight)) if colon else (Path(item), 1.0))
        except ValueError:  # no weight after all (e.g. C:\data.jsonl)
            out.append((Path(item), 1.0))
    return out


# ----------------------------------------------------------------------------------------
# Tokenizing once into memory-mapped rows

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


def tokenize_dialogues(cfg: SFTConfig, tok: Tokenizer, block_size: int) -> Path:
    """Tokenize every conversation once into out_dir/sft_tokens-<hash>/; reused while the
    inputs (files, settings, tokenizer) are unchanged. Written to a temporary folder first."""
    files = [path for path, _ in parse_sft_data(cfg.sft_data)]
    index = Index.open(cfg.data) if cfg.grounded_qa else None
    grounded = [cfg.grounded_qa, index.info] if index else []  # the info holds its articles' fingerprint
    key = json.dumps([cfg.sft_data or BUILTIN_WEIGHTS, cfg.sft_format, cfg.system_prompt, cfg.sft_val_fraction,
                      cfg.seed, block_size, tok.spec.get("kind"), tok.n_vocab, grounded,
                      [(str(f), f.stat().st_size, f.stat().st_mtime) for f in files if f.is_file()]])
    key = hashlib.sha256(key.encode() + json.dumps(tok.spec).encode()).hexdigest()[:12]
    folder = Path(cfg.out_dir) / f"sft_tokens-{key}"
    if (folder / "meta.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        skipped, stats = [], {"train": [0, 0, 0], "val": [0, 0, 0]}  # rows, tokens, supervised
        files = {s: (open(tmp / f"{s}_tokens.bin", "wb"), open(tmp / f"{s}_mask.bin", "wb"))
                 for s in ("train", "val")}  # rows are streamed to disk, never all in RAM
        offsets = {"train": [0], "val": [0]}
        cuts = Counter()
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
                        np.array(ids, dtype=np.uint16).tofile(files[split][0])
                        np.array(mask, dtype=np.uint8).tofile(files[split][1])
                        offsets[split].append(offsets[split][-1] + len(ids))
                        st = stats[split]
                        st[0], st[1], st[2] = st[0] + 1, st[1] + len(ids), st[2] + sum(mask)
        for f in (f for pair in files.values() for f in pair):
            f.close()
        if skipped:
            print(f"skipped {len(skipped)} malformed record(s), e.g. {', '.join(skipped[:5])}")
        for what, n in sorted(cuts.items()):  # long conversations: say what was done to them
            print(f"context of {block_size} tokens: {n:,} {what}")
        for split, offs in offsets.items():
            if len(offs) == 1:
                raise UsageError(f"no {split} conversations: give more dialogue data"
                                 + (" or a larger sft_val_fraction." if split == "val" else "."))
            np.save(tmp / f"{split}_offsets.npy", np.array(offs, dtype=np.int64))
        meta = {s: dict(zip(("rows", "tokens", "supervised_tokens"), v)) for s, v in stats.items()}
        meta["skipped_records"] = len(skipped)
        meta["cuts"] = dict(cuts)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


# ----------------------------------------------------------------------------------------
# Batches: rows packed into block_size windows

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


class SFTBatches(PretrainBatches):
    """Same contract as PretrainBatches (next_batch, state_dict, load_state_dict), over packed
    dialogue rows. All processes pack the same global stream of windows and process r keeps
    windows r, r+W, ...; so the (epoch, cursor) state is one for all and resume is exact."""

    def __init__(self, rows: TokenRows, block_size, batch_size, seed, rank=0, world=1, device="cpu"):
        self.rows, self.T, self.B = rows, block_size, batch_size
        self.seed, self.rank, self.world, self.device = seed, rank, world, device
        self.n_windows = len(rows)  # rows play the part of windows in the shared order()
        self.epoch, self.cursor, self._order = 0, 0, None

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


# ----------------------------------------------------------------------------------------

def end_of_turn_rate(model, tok: Tokenizer, rows: TokenRows, n: int, max_new_tokens=128, seed=0) -> float:
    """Share of held-out first questions whose sampled reply ends with <|end|> in time."""
    ended, tried = 0, 0
    for i in range(len(rows)):
        if tried == n:
            break
        ids, _ = rows.row(i)
        ids = [int(t) for t in ids]
        if tok.special[ASSISTANT] not in ids:
            continue
        prompt = ids[:ids.index(tok.special[ASSISTANT]) + 1]  # up to the first answer
        reply = list(model.generate(prompt, max_new_tokens, temperature=0.7, top_k=40, top_p=0.9,
                                    repetition_penalty=1.15, stop_tokens={tok.end_of_turn}, seed=seed + i))
        ended += reply[-1:] == [tok.end_of_turn]
        tried += 1
    return ended / max(tried, 1)


def main(argv):
    cfg = load_config(SFTConfig, argv)
    resolve_resume(cfg)
    dist = setup_dist(cfg)
    start = starting_checkpoint(cfg)
    if start is None:
        raise UsageError("chat_sft.py needs a pretrained model: set init_from (e.g. "
                         "--init_from=out/demo/best.pt) or resume=true.")
    if start.get("kind") not in ("pretrain", "sft"):
        raise UsageError(f"{cfg.init_from} is not a wikigpt model checkpoint (kind {start.get('kind')!r}).")
    tok = Tokenizer(start["tokenizer"])
    if not tok.has_chat_tokens():
        raise UsageError(f"{cfg.init_from}: its tokenizer has no chat tokens (<|user|>, <|assistant|>, "
                         "<|end|>...). Pretrain on a dataset made by this version of prepare_wiki.py.")
    block_size = start["model_config"]["block_size"]
    if not dist.master:
        torch.distributed.barrier()  # wait while process 0 tokenizes; then the folder is ready
    folder = tokenize_dialogues(cfg, tok, block_size)
    if dist.master and dist.world > 1:
        torch.distributed.barrier()
    meta = json.loads((folder / "meta.json").read_text())
    train_rows, val_rows = TokenRows.open(folder, "train"), TokenRows.open(folder, "val")
    if dist.master:
        print(f"dialogues: {meta['train']['rows']:,} train rows ({meta['train']['supervised_tokens']:,} "
              f"supervised of {meta['train']['tokens']:,} tokens), {meta['val']['rows']:,} val rows; {folder}")
    if cfg.show_examples:
        for i in range(min(cfg.show_examples, len(train_rows))):
            ids, mask = train_rows.row(i)
            print(f"--- row {i} ({int(mask.sum())} of {len(ids)} tokens learned, in [[...]]) ---")
            print(show_mask(tok, ids.tolist(), mask.tolist()))
        return
    micro, _ = batch_plan(cfg, block_size, dist.world)
    batches = SFTBatches(train_rows, block_size, micro, cfg.seed, dist.rank, dist.world, dist.device)
    summary = train(cfg, dist, tok, batches, val_set(val_rows, block_size, cfg.eval_tokens), "sft", start)
    if dist.master and cfg.eot_check:
        model, _ = model_from_checkpoint(load_checkpoint(Path(cfg.out_dir) / "best.pt"), dist.device)
        rate = end_of_turn_rate(model.eval(), tok, val_rows, cfg.eot_check)
        print(f"held-out prompts whose reply ends with <|end|> within 128 tokens: {100 * rate:.0f}% "
              f"(best.pt, {min(cfg.eot_check, len(val_rows))} prompts)")
    if dist.master and cfg.grounded_qa and cfg.qa_eval:
        model, _ = model_from_checkpoint(load_checkpoint(Path(cfg.out_dir) / "best.pt"), dist.device)
        report = wikiqa.evaluate(model.eval(), tok, cfg.data, Index.open(cfg.data), cfg.qa_eval, cfg.seed)
        print(wikiqa.format_report(report))
        (Path(cfg.out_dir) / "qa_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        summary["qa"] = report
    return summary


if __name__ == "__main__":
    run_main(main)
