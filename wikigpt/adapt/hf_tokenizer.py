"""
Our tokenizer as a Hugging Face fast tokenizer: `tokenizer.json` and the chat template, built
from the tiktoken ranks alone (no `tokenizers` package needed to write them).

A tiktoken BPE is a byte-level BPE: the pattern splits text into pieces, a piece that is a
whole token is that token, else its bytes merge pairwise by rank. The HF `BPE` model does the
same given the merges in rank order and `ignore_merges` (a whole-token piece is kept as is), on
bytes spelled as GPT-2's printable characters (`ByteLevel`).
"""
from functools import lru_cache

from wikigpt.tokenizer import ROLE_TOKENS, SPECIAL_TOKENS, Tokenizer


@lru_cache(maxsize=1)
def byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes stand for themselves,
    the others (controls, space...) take the characters from U+0100 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def spell(token: bytes) -> str:
    table = byte_chars()
    return "".join(table[b] for b in token)


def merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The last merge that builds `token`: run BPE on its bytes with only the merges ranked
    below it, which leaves exactly two parts."""
    rank = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 62))
        if ranks.get(parts[best] + parts[best + 1], 1 << 62) >= rank:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {rank}) is not a merge of two lower-ranked tokens")
    return parts[0], parts[1]


def vocab_and_merges(tok: Tokenizer) -> tuple[list[str], list[tuple[str, str]]]:
    """The BPE tokens spelled byte-level, in id order (specials not included), and the merges
    in rank order: what both tokenizer.json and a GGUF file hold."""
    ranks = tok.enc._mergeable_ranks  # bytes -> id, in merge order
    by_rank = sorted(ranks, key=ranks.get)
    merges = [tuple(map(spell, merge_of(token, ranks))) for token in by_rank if len(token) > 1]
    return [spell(t) for t in by_rank], merges


def tokenizer_json(tok: Tokenizer) -> dict:
    enc = tok.enc
    vocab, merges = vocab_and_merges(tok)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in sorted(tok.special.items(), key=lambda kv: kv[1])]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": enc._pat_str}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True, "vocab": {t: i for i, t in enumerate(vocab)},
                  "merges": [list(m) for m in merges]},
    }


def chat_template() -> str:
    """Jinja that renders what tokenizer.render_chat renders: <|role|>content<|end|> per
    message, then <|assistant|> when a reply is wanted."""
    roles = ", ".join(f"'{role}': '{token}'" for role, token in ROLE_TOKENS.items())
    return ("{%- set roles = {" + roles + "} -%}"
            "{%- for m in messages -%}{{ roles[m['role']] + m['content'] + '" + SPECIAL_TOKENS[4] + "' }}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ roles['assistant'] }}{%- endif -%}")
