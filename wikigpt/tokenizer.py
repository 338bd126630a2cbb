"""
The tokenizer: one place that says how text becomes token ids (the chat template that
uses its special tokens is chat_template.py).

Both tokenizers run through tiktoken at encode time:
  - "gpt2":      tiktoken's GPT-2 BPE (50,257 ranks) plus our special tokens on top;
  - "bpe:N":     a byte-level BPE with N ids in total, trained with rustbpe on the train split.

Special tokens are reserved at data-prep time, so that one tokenizer serves pretraining
(the document separator) and chat fine-tuning (the turn markers) alike.
"""
import base64
import codecs
import json

import tiktoken

from wikigpt.run.durable import write_text

DOC_SEP = "<|endoftext|>"  # starts every article; GPT-2 already has it (id 50256)
SYSTEM, USER, ASSISTANT, END_OF_TURN = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [DOC_SEP, SYSTEM, USER, ASSISTANT, END_OF_TURN]
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
MAX_VOCAB = 2**16  # token ids are stored as uint16
MIN_BPE_VOCAB = 256 + len(SPECIAL_TOKENS) + 1  # the 256 bytes, our specials, at least one merge


class TokenizerError(ValueError):
    """A tokenizer spec or file that cannot be used; the message says how to fix it."""


def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 BPE. tiktoken downloads its two files once (to $TIKTOKEN_CACHE_DIR, or a
    temporary folder); without a network that is an error that says what to do."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' ConnectionError, a timeout, a proxy's answer, a cut file
        raise TokenizerError(
            f"could not get GPT-2's encoding for tiktoken ({type(e).__name__}: {str(e)[:120]}). tiktoken "
            "downloads it once from openaipublic.blob.core.windows.net: connect to the internet, or point "
            "TIKTOKEN_CACHE_DIR at a folder that holds it (copied from a machine that has it)") from e


class Tokenizer:
    """A tiktoken Encoding with our special tokens, plus the spec to rebuild it anywhere.

    The spec is a small JSON-able dict. It is saved in the dataset folder and inside every
    checkpoint, so a checkpoint always carries the exact tokenizer it was trained with.
    """

    def __init__(self, spec: dict):
        self.spec = spec
        names = spec.get("special_tokens", SPECIAL_TOKENS)  # all of ours unless a spec says less
        if spec["kind"] == "gpt2":
            base = gpt2_encoding()
            ranks, pattern = base._mergeable_ranks, base._pat_str
            special = {DOC_SEP: base.eot_token}
            for i, tok in enumerate(t for t in names if t != DOC_SEP):
                special[tok] = base.n_vocab + i
        elif spec["kind"] == "bpe":
            ranks = {base64.b64decode(b): r for b, r in spec["ranks"]}
            if sorted(ranks.values()) != list(range(len(ranks))):  # damaged: tiktoken would panic, or leave a gap
                raise ValueError("the merge ranks are not 0 to N-1, each once")
            pattern = spec["pattern"]
            special = {tok: len(ranks) + i for i, tok in enumerate(names)}
        else:
            raise TokenizerError(f"unknown tokenizer kind {spec['kind']!r}; expected 'gpt2' or 'bpe'")
        self.enc = tiktoken.Encoding(spec["kind"], pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens=special)
        self.special = special
        self.n_vocab = self.enc.n_vocab
        if self.n_vocab > MAX_VOCAB:
            raise TokenizerError(f"vocab of {self.n_vocab} ids does not fit uint16 (max {MAX_VOCAB})")
        self.doc_sep = special[DOC_SEP]
        self.end_of_turn = special.get(END_OF_TURN)
        # where generated text ends: at every special token. <|end|> closes a reply and <|endoftext|>
        # a document; a model that starts another turn (<|user|>) has ended its own, and a role token
        # shown as text would only confuse the reader (TextStream hides them)
        self.stops = frozenset(special.values())

    # ----- building -----
    @classmethod
    def from_name(cls, name: str, train_texts=None) -> "Tokenizer":
        """'gpt2', or 'bpe:N' trained on train_texts (an iterable of str)."""
        if name == "gpt2":
            return cls({"kind": "gpt2"})
        vocab_size = parse_bpe_name(name)
        import rustbpe  # only needed when training

        trainer = rustbpe.Tokenizer()
        # rustbpe counts the 256 byte tokens in vocab_size; the specials come on top of it
        trainer.train_from_iterator(train_texts, vocab_size=vocab_size - len(SPECIAL_TOKENS))
        ranks = sorted(((bytes(b), r) for b, r in trainer.get_mergeable_ranks()), key=lambda x: x[1])
        spec = {"kind": "bpe", "pattern": trainer.get_pattern(),
                "ranks": [[base64.b64encode(b).decode("ascii"), r] for b, r in ranks]}
        return cls(spec)

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """A tokenizer.json that save() wrote; one cut short or overwritten (a copy that failed, a
        full disk) is a TokenizerError that names it, as a damaged meta.json is a DatasetError."""
        fix = "Copy it again from where the dataset was made, or re-run prepare_wiki.py --overwrite."
        try:
            with open(path, encoding="utf-8") as f:
                spec = json.load(f)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise TokenizerError(f"{path}: not valid JSON ({e}), so not a tokenizer this code wrote. {fix}") from None
        if not isinstance(spec, dict) or spec.get("kind") not in ("gpt2", "bpe"):
            raise TokenizerError(f"{path}: not a tokenizer this code wrote (no \"kind\" of 'gpt2' or 'bpe'). {fix}")
        try:
            return cls(spec)
        except (KeyboardInterrupt, SystemExit, TokenizerError):
            raise
        except BaseException as e:  # a damaged rank or pattern: base64's, re's, or tiktoken's Rust panic
            raise TokenizerError(f"{path}: its merges do not make a tokenizer ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:100]}): it is damaged. {fix}") from None

    def save(self, path):
        write_text(path, json.dumps(self.spec))  # whole or not at all, even after a crash

    @property
    def name(self) -> str:
        return "gpt2" if self.spec["kind"] == "gpt2" else f"bpe:{self.n_vocab}"

    # ----- using -----
    def encode(self, text: str) -> list[int]:
        """Plain text to ids. Special-token strings inside text are encoded as ordinary text,
        so an article that mentions '<|endoftext|>' cannot inject a document break."""
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=1)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids], errors="replace")

    def token_bytes(self) -> list[int]:
        """UTF-8 length of every id (0 for special tokens), for bits-per-byte."""
        specials = set(self.special.values())
        return [0 if i in specials else len(self.enc.decode_single_token_bytes(i))
                for i in range(self.n_vocab)]

    def utf8_table(self, size: int):
        """(8, size) long: the UTF-8 decoder state after each id, from each of its 8 states
        (0 = between characters), or -1 where that id would make the text invalid. A byte-level
        BPE can emit byte sequences that are not UTF-8 (a small model does, and each broken
        character shows as U+FFFD); sampling only ids with a state >= 0 keeps replies valid."""
        import torch

        if getattr(self, "_utf8_table", None) is not None and self._utf8_table.size(1) == size:
            return self._utf8_table  # built once per tokenizer: ~1 s for 8k ids
        table = torch.full((len(_UTF8_NEXT), size), -1, dtype=torch.long)
        for i in range(self.n_vocab):
            data = self.enc.decode_single_token_bytes(i)
            for start in range(len(_UTF8_NEXT)):
                state = start
                for byte in data:
                    state = _utf8_next(state, byte)
                    if state < 0:
                        break
                table[start, i] = state
        self._utf8_table = table
        return table

    def utf8_state_after(self, ids, state: int = 0) -> int:
        """The UTF-8 decoder's state (utf8_table's) after the bytes of `ids`, from `state`."""
        for i in ids:
            for byte in self.enc.decode_single_token_bytes(i):
                # a byte that cannot go on from here is read again as a start, as Python's codec reads it
                state = _utf8_next(state, byte)
                state = max(_utf8_next(0, byte), 0) if state < 0 else state
        return state

    def has_chat_tokens(self) -> bool:
        return all(t in self.special for t in (SYSTEM, USER, ASSISTANT, END_OF_TURN))


# A UTF-8 decoder as a state machine: state -> [(byte range, next state)]. 0 = between
# characters; 1-3 = that many continuation bytes to come; 4-7 = the first continuation byte
# of E0 / ED / F0 / F4 sequences, whose range is narrower (no overlong forms, surrogates, or
# code points past U+10FFFF).
_CONT = (0x80, 0xBF)
_UTF8_NEXT = [
    [((0x00, 0x7F), 0), ((0xC2, 0xDF), 1), ((0xE0, 0xE0), 4), ((0xE1, 0xEC), 2), ((0xED, 0xED), 5),
     ((0xEE, 0xEF), 2), ((0xF0, 0xF0), 6), ((0xF1, 0xF3), 3), ((0xF4, 0xF4), 7)],
    [(_CONT, 0)], [(_CONT, 1)], [(_CONT, 2)],
    [((0xA0, 0xBF), 1)], [((0x80, 0x9F), 1)], [((0x90, 0xBF), 2)], [((0x80, 0x8F), 2)],
]


def _utf8_next(state: int, byte: int) -> int:
    return next((nxt for (lo, hi), nxt in _UTF8_NEXT[state] if lo <= byte <= hi), -1)


def parse_bpe_name(name: str) -> int:
    """'bpe:8192' -> 8192, with a clear error for anything else."""
    kind, _, size = name.partition(":")
    if kind != "bpe" or not size.isdigit():
        raise TokenizerError(f"unknown tokenizer {name!r}: use 'gpt2' or 'bpe:VOCAB_SIZE' (e.g. bpe:8192)")
    vocab_size = int(size)
    if not MIN_BPE_VOCAB <= vocab_size <= MAX_VOCAB:
        raise TokenizerError(f"vocab size {vocab_size} is out of range: a trained BPE needs "
                             f"{MIN_BPE_VOCAB}..{MAX_VOCAB} ids (tokens are stored as uint16)")
    return vocab_size


class TextStream:
    """Token ids in, text out, never splitting a UTF-8 character across two pieces (one
    Chinese character is often two or three byte-level tokens). Special tokens show as nothing."""

    def __init__(self, tok: Tokenizer, pending: bytes = b""):
        self.tok = tok
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.decoder.decode(pending)  # the start of a character that the text before left unfinished

    @staticmethod
    def text_and_pending(tok: Tokenizer, ids) -> tuple[str, bytes]:
        """The text of ids (as decode() gives it), but for the bytes of a character they leave
        unfinished (a prompt of token ids may end inside one), returned apart: a TextStream(tok,
        pending) goes on from there. Two C loops (tiktoken's, the codec's), not one per token."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = decoder.decode(tok.enc.decode_bytes(ids))
        return text, decoder.getstate()[0]

    def push(self, token: int) -> str:
        if token in self.tok.stops:
            return ""  # structure, not text (Tokenizer.stops)
        return self.decoder.decode(self.tok.enc.decode_single_token_bytes(int(token)))

    def flush(self) -> str:
        """The end of the text. Bytes of a character that never completed (a reply cut by a
        length limit) are dropped rather than shown as U+FFFD."""
        pending, _ = self.decoder.getstate()
        return "" if pending else self.decoder.decode(b"", final=True)


def stream_text(tok: Tokenizer, ids):
    """Yield text as token ids arrive (see TextStream)."""
    stream = TextStream(tok)
    for i in ids:
        piece = stream.push(i)
        if piece:
            yield piece
    tail = stream.flush()
    if tail:
        yield tail
