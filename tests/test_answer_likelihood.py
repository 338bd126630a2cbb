"""The chat model's likelihood of each candidate answer (wikigpt/knowledge/likelihood.py) and its
column in bench/bench_answers.py --ckpt: the batched, padded, left-truncated scores equal a plain
one-conversation-at-a-time reading of the template's learned tokens; a model prefers the text it
learned over the same tokens scrambled; the table's picks and its command line."""
import random
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import PROSE, run_cli

from bench.bench_answers import likelihood_table
from bench.bench_answers import main as bench_main
from wikigpt.chat.chat_template import Message, render_chat
from wikigpt.decoding.load import load_model
from wikigpt.knowledge.evidence import Item, Reader
from wikigpt.knowledge.likelihood import conversation, likeliest, reply_scores, tie_broken
from wikigpt.knowledge.natural import MAX_WRONG, NaturalSet, load_natural
from wikigpt.knowledge.retrieval import build_index

TOLERANCE = 1e-4  # float32 on the CPU: a padded batch and a single row differ by rounding only (~1e-6 seen)


@pytest.fixture(scope="module")
def chat(tiny_ckpt):
    model, tok, _ = load_model(tiny_ckpt, device="cpu")  # float32 on every machine: the tolerance is float32's
    return model, tok


@pytest.fixture(scope="module")
def reader(tiny_data, tmp_path_factory):
    """The tiny dataset with its index, built in a copy (the session's dataset stays as it was)."""
    folder = tmp_path_factory.mktemp("likelihood") / "data"
    shutil.copytree(tiny_data, folder)
    build_index(folder, quiet=True)
    return Reader.open(folder)


def reference_score(model, tok, messages, reply) -> float:
    """The mean log-probability of the reply's learned tokens, read the plain way: the whole
    conversation rendered once, one forward, no batch, no padding (it must fit the context)."""
    ids, mask = render_chat(tok, messages + [Message("assistant", reply)])
    assert len(ids) <= model.cfg.block_size + 1, "the reference needs the whole conversation in the context"
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    logp = F.log_softmax(logits[0], dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    learned = torch.tensor(mask[1:], dtype=torch.bool)
    return logp[learned].mean().item()


def test_batched_padded_scores_equal_each_reply_read_alone(chat):
    model, tok = chat
    messages = [Message("user", "What is the river?")]
    replies = ["It flows.", "The river flows through the valley.", "", "Mill"]  # lengths differ: rows are padded
    batched = reply_scores(model, tok, messages, replies)
    assert len(batched) == len(replies)
    for reply, score in zip(replies, batched):
        alone = reply_scores(model, tok, messages, [reply])[0]
        assert abs(alone - score) < TOLERANCE, (reply, alone, score)  # padding changes no score
        assert abs(reference_score(model, tok, messages, reply) - score) < TOLERANCE, reply  # the right tokens count
    assert len(set(round(s, 3) for s in batched)) > 1  # the replies are told apart
    assert model.training is False


def test_a_model_prefers_the_text_it_learned_to_the_same_tokens_scrambled(chat):
    model, tok = chat
    text = PROSE.split(",")[0]  # "The river flows through the valley and past the old mill": 20 steps on PROSE
    ids = tok.encode(text)
    scrambled = ids[:]
    random.Random(0).shuffle(scrambled)
    assert scrambled != ids
    learned, shuffled = reply_scores(model, tok, [Message("user", "Tell me about the river.")],
                                     [text, tok.decode(scrambled)])
    assert learned > shuffled + 0.5, (learned, shuffled)  # nats per token


def test_what_falls_out_of_the_context_changes_nothing_and_a_long_reply_still_scores(chat):
    model, tok = chat
    block = model.cfg.block_size
    question, reply = Message("user", "And the mill?"), "The mill ground the grain."
    one = [Message("user", PROSE * 3), Message("assistant", PROSE * 2), question]
    other = [Message("user", "Who ground the grain? " * 20), Message("assistant", "Farmers. " * 30), question]
    assert len(render_chat(tok, one)[0]) > 3 * block  # far more than the context holds
    a, b = reply_scores(model, tok, one, [reply]) + reply_scores(model, tok, other, [reply])
    assert abs(a - b) < TOLERANCE  # the old exchange that does not fit is dropped, whatever it said
    assert abs(a - reply_scores(model, tok, [question], [reply])[0]) < TOLERANCE
    long_question = "Tell me, " + PROSE * 2 + "what did the mill grind?"  # alone longer than the context
    c, d = (reply_scores(model, tok, [Message("user", start + long_question)], [reply])[0]
            for start in ("Say: ", "Hi! "))
    assert len(tok.encode(long_question)) > block and abs(c - d) < TOLERANCE  # cut from the left, never refused
    longer = reply_scores(model, tok, [question], [PROSE * 4])[0]  # a reply longer than the whole context
    assert len(tok.encode(PROSE * 4)) > block and longer == longer and longer < 0  # finite, a log-probability


def test_the_model_breaks_only_the_rules_ties():
    items = [Item("sentence", "Article 1", text, score=score) for text, score in (("a", 0.9), ("b", 0.9), ("c", 0.5))]
    assert tie_broken(items, [-3.0, -2.0, -1.0]) == 1  # the likeliest of the two tied at the top
    assert likeliest([-3.0, -2.0, -1.0]) == 2
    assert tie_broken(items, [-2.0, -2.0, -1.0]) == likeliest([-2.0, -2.0]) == 0  # equal: the rules' order


def test_the_table_counts_the_picks_among_the_rules_candidates(chat, reader):
    model, tok = chat
    questions = [{"question": f"What is Article {n} about?", "answers": [f"topic {n}"]} for n in (1, 4, 7)]
    turns = [{"question": "What is Article 2 about?", "answers": ["topic 2"]},
             {"question": "And what flows through the valley?", "answers": ["river"]}]  # read after the first
    data = NaturalSet(questions=questions, conversations=[{"turns": turns}])
    n, one = likelihood_table(reader, data, model, tok, k=1)
    assert n == 5
    assert one["any"] > 0  # the lead sentence names the topic
    assert one["any"] == one["rules"] == one["model"] == one["tie"] == one["random"] == one["grounded"]  # one choice
    _, eight = likelihood_table(reader, data, model, tok, k=8)
    assert eight["rules"] == one["rules"] and eight["any"] >= one["any"]
    assert all(eight[key] <= eight["any"] for key in eight)
    assert conversation("q2", ["q1", "a1"]) == [Message("user", "q1"), Message("assistant", "a1"),
                                                Message("user", "q2")]


def test_the_bench_prints_the_column_and_its_help_reads_right(chat, reader, tiny_ckpt, capsys):
    bench_main(["--data", str(reader.index.folder), "--ckpt", str(tiny_ckpt), "--device", "cpu", "--k", "3"])
    out = capsys.readouterr().out
    dev = load_natural("dev")
    asked = len(dev.questions) + sum(len(c["turns"]) for c in dev.conversations)
    assert f"{asked} answerable questions and turns" in out
    for label in ("an accepted answer in the top 3", "the model's likeliest of the 3",
                  "the rules, ties broken by the model"):
        assert label in out, out
    r = run_cli("bench/bench_answers.py", "-h", timeout=120)
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split("options:")[1].split("--calibrate")[1].split("--ab")[0].split())
    assert said == (f"choose the 'not found' threshold on the dev split (at most {MAX_WRONG:.0%} answered wrong) "
                    "and store it with the index"), said  # the % escaped: argparse formats help with %


@pytest.mark.parametrize("args, says", [(["--threshold", "nan"], "give a number from 0 to 1"),
                                        (["--natural", "/nowhere"], "no questions.jsonl there")])
def test_the_bench_refuses_a_threshold_or_question_set_it_cannot_use(reader, args, says, capsys):
    with pytest.raises(SystemExit) as e:  # nan was accepted, and every answer scored declined
        bench_main(["--data", str(reader.index.folder), *args])
    assert e.value.code == 2 and says in capsys.readouterr().err
