"""
Dialogue data for chat fine-tuning: files in four formats (openai, sharegpt, alpaca, pairs)
or the built-in dialogues, checked into conversations (lists of Message) and split into train
and val by a stable hash, so that eval.py finds the very conversations a run held out.
"""
import codecs
import hashlib
import importlib.util
import json
from pathlib import Path

from wikigpt.knowledge import wikiqa
from wikigpt.chat.chat_template import Message
from wikigpt.cli import UsageError
from wikigpt.chat.sft_config import SFTConfig
from wikigpt.tokenizer import Tokenizer


ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
                "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant"}


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
    if path.is_dir():
        raise UsageError(f"dialogue file {path} is a folder: give a JSONL file (or a JSON array) of dialogues.")
    if not path.is_file():
        raise UsageError(f"dialogue file {path} not found.")
    with open(path, "rb") as f:
        head = f.read(8192)
        if head.startswith(b"\x1f\x8b") or b"\0" in head:  # gzip, a token shard, a checkpoint: no record to skip
            kind = "a gzip file: decompress it first" if head.startswith(b"\x1f\x8b") else "binary data"
            raise UsageError(f"dialogue file {path} is not text but {kind}; dialogues are JSONL (or a JSON array).")
        start = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0  # Windows editors write one
        f.seek(start)
        is_array = next((line.lstrip()[:1] for line in f if line.strip()), b"") == b"["
        f.seek(start)
        where, records = ("item", _json_array(path, f)) if is_array else ("line", _json_lines(f))
        n = 0
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
        if n == 0:  # else "no train conversations", with no word of which file gave none
            raise UsageError(f"dialogue file {path} is empty: it holds no records (JSONL, or a JSON array).")


def _json_lines(f):
    """(line number, record or BadRecord), a line at a time: a file of any size is never all in
    RAM (read whole, a 200 MB file peaked at 1.4 GB before its first conversation)."""
    for lineno, line in enumerate(f, 1):
        if line.strip():
            try:
                yield lineno, json.loads(line.removesuffix(b"\n").decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                yield lineno, BadRecord(f"not valid JSON ({e})")


def _json_array(path: Path, f):
    """(item number, record) of a JSON array, parsed whole: it is one document, which the json
    module (and no dependency of ours) reads only at once. Big data belongs in JSONL."""
    try:
        return enumerate(json.loads(f.read().decode("utf-8")), 1)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not valid JSON ({e}).")


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
    ones, which come last, are left out: wikiqa.evaluate_qa has its own held-out articles)."""
    convs = (c for _, group in conversation_sources(cfg, [], tok, block_size) for c in group)
    for i, conv in enumerate(convs):
        if is_val(split_hash(cfg.seed, i), cfg.sft_val_fraction):
            yield conv


MAX_WEIGHT = 100  # a file's conversations are repeated this many times at most: each copy is written to disk


def parse_sft_data(spec: str) -> list[tuple[Path, float]]:
    """'a.jsonl,b.json:0.5' -> [(a.jsonl, 1.0), (b.json, 0.5)]; a weight is a number in (0, MAX_WEIGHT]."""
    out = []
    for item in filter(None, (i.strip() for i in spec.split(","))):
        path, colon, weight = item.rpartition(":")
        try:
            out.append((Path(path), float(weight)) if colon else (Path(item), 1.0))
        except ValueError:  # no weight after all (e.g. C:\data.jsonl)
            out.append((Path(item), 1.0))
        if not 0 < out[-1][1] <= MAX_WEIGHT:  # nan and inf too: no number repeats a file that often
            raise UsageError(f"--sft_data {item}: the weight after ':' repeats the file's conversations and must be "
                             f"a number above 0 and at most {MAX_WEIGHT} (0.5: half of them, 2: each twice).")
    return out
