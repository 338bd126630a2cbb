"""
The chat model's own judgement of the evidence reader's candidates: each candidate's mean
log-probability per token as the assistant's reply to the conversation, all candidates of a
question in one batched forward. A third way to pick the answer, beside the reader's rules and
the learned ranker (ranker.py); bench/bench_answers.py --ckpt prints the three side by side.

    model, tok, _ = load_model("out/chat/best.pt")       # wikigpt/decoding/load.py
    found = reader.find("capital of angola?")
    scores = candidate_scores(model, tok, found)          # one per found.items[:K], higher = likelier
    found.items[likeliest(scores)]                        # the model's pick
    found.items[tie_broken(found.items, scores)]          # the rules' pick, ties broken by the model

The model comes in as an argument: knowledge/ loads no checkpoints (decoding/load.py does).

The prompt holds no sources. The grounded prompt chat.py --rag sends (grounding.evidence_prompt)
lists the rules' best items as sources, the rules' first as [1], and the chat model was
fine-tuned on rows whose answer is source [1]: scored with it, a model that learned SFT well
reads back the rules' pick (the rules measured twice), and the candidates left out of the prompt
(at most 3 of the K are shown) could not be copied. Listing all K in another order does not
fit: K sentences of ~30 tokens fill a 256-token context. So this column is the model's own
belief, given only the conversation as chat.py without --rag renders it (bench_answers.py --ckpt
prints the grounded prompt's pick beside it, as a contrast).
"""
import torch
import torch.nn.functional as F

from wikigpt.chat.chat_template import ContextOverflow, Message, fit_history, prompt_room, render_chat
from wikigpt.knowledge.evidence import Found, Item

# candidates scored per question: the rules' top 8 hold nearly every answer their top 50 do (dev:
# 163 of 181 against 169); past 8 the forward grows, the pool barely
K = 8


def conversation(question: str, history=()) -> list[Message]:
    """The reader's history (question, reply, question, reply, ... as Reader.find takes it) and
    the question, as chat messages."""
    return [Message(("user", "assistant")[n % 2], text) for n, text in enumerate(history)] + [Message("user", question)]


@torch.no_grad()
def reply_scores(model, tok, messages: list[Message], replies: list[str]) -> list[float]:
    """Mean log-probability per token of each reply (its text and its <|end|>, the tokens SFT
    taught: the template's mask) as the assistant's answer to `messages`, in one forward.

    Mean, not sum: every token costs log-probability, so a sum prefers the shortest candidate
    ("Luanda" over any sentence that holds it); the mean compares texts of different lengths on
    one scale (per-token perplexity). Counting <|end|> charges a reply that stops where the model
    would go on."""
    if not replies:
        return []
    block = model.cfg.block_size
    answers = [render_chat(tok, [Message("assistant", r)]) for r in replies]  # <|assistant|> + text + <|end|>
    try:  # the conversation as chat.py fits it (oldest exchanges dropped), room left for the longest reply
        prompt, _ = fit_history(tok, messages, prompt_room(block, max(len(ids) for ids, _ in answers)), block - 1)
    except ContextOverflow:  # the question alone overflows: chat.py refuses it, a score reads its end
        prompt = render_chat(tok, messages, add_generation_prompt=True)[0]
    prompt = prompt[:-1]  # its closing <|assistant|> is each answer's first token
    rows = []
    for ids, mask in answers:
        seq, learn = (prompt + ids)[-(block + 1):], ([0] * len(prompt) + mask)[-(block + 1):]  # from the left
        rows.append((seq[:-1], [t if m else -1 for t, m in zip(seq[1:], learn[1:])]))
    T = max(len(x) for x, _ in rows)
    # padded on the right: attention is causal, so no counted position sees the padding
    x = torch.tensor([x + [0] * (T - len(x)) for x, _ in rows], device=model.device)
    y = torch.tensor([y + [-1] * (T - len(y)) for _, y in rows], device=model.device)
    was_training = model.training
    model.eval()
    try:
        logits, _ = model(x, y)  # (B, T, V)
    finally:
        model.train(was_training)
    nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none").view(y.shape)
    counted = (y != -1).sum(1).clamp(min=1)
    return (-nll.sum(1) / counted).tolist()


def candidate_scores(model, tok, found: Found, history=(), k: int = K) -> list[float]:
    """reply_scores of the reader's top k items for found.question, asked after `history` (the
    reader's form: question, reply, ...)."""
    return reply_scores(model, tok, conversation(found.question, history), [i.quoted for i in found.items[:k]])


def likeliest(scores: list[float]) -> int:
    """The position of the highest score (the first of equals: the rules' order)."""
    return max(range(len(scores)), key=lambda n: (scores[n], -n))


def tie_broken(items: list[Item], scores: list[float]) -> int:
    """The rules' pick, the model choosing among the items the rules score equal to the best
    (the reader otherwise takes the first candidate it made: an order, not a judgement)."""
    tied = [n for n in range(len(scores)) if items[n].score == items[0].score]
    return max(tied, key=lambda n: (scores[n], -n))
