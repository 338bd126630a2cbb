"""
The chat template: how a conversation becomes token ids and a loss mask (the same rendering at
training and at chat time), and how a conversation is fitted into the model's context.
Shared by chat_sft.py (training rows), chat.py, serve.py, eval.py and the exported template.
"""
from dataclasses import dataclass

from wikigpt.tokenizer import ASSISTANT, ROLE_TOKENS, Tokenizer

# ----------------------------------------------------------------------------------------
# The chat template: the one definition that SFT, chat and serving use.
#
#   <|system|>You are helpful.<|end|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>
#
# The model learns (loss mask = 1) only the assistant's words and its <|end|>; everything
# else is context (mask = 0). At chat time we feed the history plus "<|assistant|>" and
# sample until the model emits <|end|>.

@dataclass
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


def render_chat(tok: Tokenizer, messages: list[Message], add_generation_prompt=False):
    """Conversation -> (ids, mask): mask[i] = 1 where ids[i] is a token the model must learn."""
    ids, mask = [], []
    for m in messages:
        role_ids = [tok.special[ROLE_TOKENS[m.role]]]
        body = tok.encode(m.content) + [tok.end_of_turn]
        learn = 1 if m.role == "assistant" else 0
        ids += role_ids + body
        mask += [0] * len(role_ids) + [learn] * len(body)
    if add_generation_prompt:
        ids.append(tok.special[ASSISTANT])
        mask.append(0)
    return ids, mask


def show_mask(tok: Tokenizer, ids, mask) -> str:
    """Human-readable view of a rendered conversation: learned spans in [[double brackets]]."""
    out, start = [], 0
    for i in range(1, len(ids) + 1):  # decode runs of equal mask together (keeps UTF-8 whole)
        if i == len(ids) or mask[i] != mask[start]:
            text = tok.decode(ids[start:i])
            out.append(f"[[{text}]]" if mask[start] else text)
            start = i
    return "".join(out)


# ----------------------------------------------------------------------------------------
# Fitting a conversation into the context: shared by chat.py and serve.py

class ContextOverflow(ValueError):
    """Even the system turn plus the last message do not fit the room left for the prompt."""

    def __init__(self, needed: int, room: int, system: int = 0):
        if system >= room:  # the system turn alone: the last message is not what to shorten
            text = f"the system message alone needs {system} tokens with the chat template, but only {room} fit in the context. Shorten it."
        else:
            with_system = f" (the system message's {system} included)" if system else ""
            text = f"the last message needs {needed} tokens with the chat template{with_system}, but only {room} fit in the context. Shorten it."
        super().__init__(text)
        self.needed, self.room = needed, room


def prompt_room(block_size: int, max_new_tokens: int) -> int:
    """Tokens the prompt may use: what the reply leaves free, but at least half the context
    (a long max_new_tokens then ends the reply at the context's end instead of the history)."""
    return max(block_size - max_new_tokens, block_size // 2)


def fit_history(tok: Tokenizer, history: list[Message], room: int, limit: int | None = None):
    """Render the conversation plus the assistant prompt, dropping the oldest exchanges
    (never the system turn) until it fits in `room` tokens. Returns (ids, kept messages).
    When the system turn and the last message alone exceed `room`, they may still use up to
    `limit` tokens (the reply then has less space); beyond that, ContextOverflow."""
    system = history[:1] if history and history[0].role == "system" else []
    turns, head = history[len(system):], render_chat(tok, system)[0]
    # renderings add up message by message: each is tokenized once, newest first, as far back as room reaches
    pieces, sizes = [], [len(head) + 1]  # sizes[k]: tokens with the last k turns (+1: <|assistant|>)
    for m in reversed(turns):
        pieces.append(render_chat(tok, [m])[0])
        sizes.append(sizes[-1] + len(pieces[-1]))
        if sizes[-1] > room:
            break
    n, least = len(turns), min(len(turns), 1)  # keep n, n-2, n-4, ... turns (whole exchanges), or the last one
    k = max((k for k in range(least, len(sizes)) if sizes[k] <= room and (k == least or (n - k) % 2 == 0)),
            default=least)
    if sizes[k] > max(room, limit or room):
        raise ContextOverflow(sizes[k], limit or room, len(head) if system else 0)
    return head + [i for p in reversed(pieces[:k]) for i in p] + [tok.special[ASSISTANT]], system + turns[n - k:]
