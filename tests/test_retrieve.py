"""Knowledge integration: kept articles, passages, the BM25 index (en + zh; resume, old format), grounded SFT rows,
chat.py --rag, serve.py --rag, the held-out QA benchmark (per kind of question) and bad input."""
import json
import math
import os
import random
from collections import Counter
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import PROSE, ROOT, TINY, dump_xml, page, run_cli

from wikigpt.cli import UsageError
from wikigpt.knowledge import scores
from wikigpt.knowledge import wikiqa
from wikigpt.chat.sft_rows import rows_of
from wikigpt.prep.data import DatasetError, load_dataset, read_articles
from prepare_wiki import main as prepare
from wikigpt.knowledge.retrieval import PASSAGE_CHARS, Index, add_index_info, build_index, split_passages, terms
from wikigpt.knowledge.index_build import INDEX_VERSION
from wikigpt.knowledge.grounding import evidence_prompt, reader_of
from wikigpt.cli import run_main
from wikigpt.decoding.sampling import mix_dense
from wikigpt.chat.chat_template import Message, prompt_room, render_chat
from wikigpt.knowledge.grounding import fit_grounded
from wikigpt.knowledge.replies import ABSTAIN, is_abstention

SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sil", "bu", "zen", "qua", "dor", "fi"]
KINDS = ["river", "mountain", "city", "painter", "festival", "language", "bird", "island"]
PLACES = ["the north", "the old empire", "the eastern coast", "the high valley", "the desert"]
ZH = [("长江", "长江是中国最长的河流，流经多个省份。"), ("黄山", "黄山是安徽省的一座名山，以奇松怪石闻名。"),
      ("北京", "北京是中华人民共和国的首都，历史悠久。"), ("熊猫", "熊猫是一种生活在中国西南山区的哺乳动物。"),
      ("茶", "茶是一种用茶树叶子冲泡的饮料，起源于中国。"), ("长城", "长城是古代中国修建的军事防御工程。")]


def invented_articles(n, seed=0):
    """n articles about invented things: their facts cannot be known without reading them."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        if name in seen:
            continue
        seen.add(name)
        lead = f"{name} is a {rng.choice(KINDS)} from {rng.choice(PLACES)}."
        out.append((name, f"'''{lead[:len(name)]}'''{lead[len(name):]} " + PROSE * 3))
    return out


@pytest.fixture(scope="module")
def rag_data(tmp_path_factory):
    """A dataset of 40 invented English articles and 6 Chinese ones, with its index."""
    root = tmp_path_factory.mktemp("rag")
    pages = [page(t, text) for t, text in invented_articles(40)]
    pages += [page(t, text + "这里还有更多的介绍和说明文字。" * 12) for t, text in ZH]
    (root / "dump.xml").write_text(dump_xml(*pages), encoding="utf-8")
    prepare([str(root / "dump.xml"), "--out", str(root / "data"), "--tokenizer", "bpe:512", "--min_chars", "50",
             "--val_fraction", "0.25", "--workers", "1"])
    build_index(root / "data", quiet=True)
    return root / "data"


def test_a_search_reads_a_bounded_number_of_terms_and_weighs_a_repeated_one_by_its_count(rag_data):
    """A search reads every posting of every term it is given: a client's 2,000 common words
    cost minutes on enwiki. It takes the query's MAX_QUERY_TERMS rarest distinct terms, and a
    term said twice counts twice (one clause, weighed), as the repeated clauses did."""
    from wikigpt.knowledge.retrieval import MAX_QUERY_TERMS

    index = Index.open(rag_data)
    title, *others = [name for name, _ in invented_articles(11)]
    common = terms(" ".join([PROSE, *KINDS, *PLACES]))  # words of every article or of many
    q = common + terms(" ".join(others)) + terms(title)
    assert len(set(q)) > MAX_QUERY_TERMS
    kept = index.weighed_terms(q)
    assert len(kept) == MAX_QUERY_TERMS and terms(title)[0] in kept  # the rarest term is kept
    assert min(map(index.idf, kept)) >= max(index.idf(t) for t in set(q) - set(kept))
    assert index.search(" ".join([*common, title]), 1)[0].title == title
    once, twice = index.search(title, 3), index.search(f"{title} {title}", 3)
    assert [p.text for p in once] == [p.text for p in twice]
    assert [p.score for p in twice] == pytest.approx([2 * p.score for p in once], rel=1e-5)


# ----- kept articles, passages, terms

def test_prepare_keeps_every_article_with_its_split(rag_data):
    ds = load_dataset(rag_data)
    articles = list(read_articles(rag_data))
    assert len(articles) == 46 and {a["split"] for a in articles} == {"train", "val"}
    for split in ("train", "val"):
        assert sum(a["split"] == split for a in articles) == ds.meta["splits"][split]["articles"]
    assert all(a["id"] == "1" and a["text"] for a in articles)  # the page id of conftest's pages


def test_passages_keep_the_text_whole_and_never_split_a_character():
    text = ("第一段很短。\n" + "这是一个很长的句子，" * 40 + "结束。\n" + "Short line.\n" + "word " * 300)
    passages = split_passages(text, max_chars=100)
    assert all(0 < len(p) <= 100 for p in passages)
    assert "".join("".join(p.split()) for p in passages) == "".join(text.split())  # nothing lost or mangled
    for p in passages:
        assert p.encode("utf-8").decode("utf-8") == p and "\ufffd" not in p


def test_a_sentence_too_long_for_a_passage_comes_after_the_sentences_before_it():
    """The overlong sentence's pieces were put before the sentences that precede it, and its
    tail joined them: "...might illustrate Animal Farm.  of Animal Farm." in an answer."""
    text = "First sentence here. " + "x" * 30 + " long tail words. Last one."
    passages = split_passages(text, max_chars=40)
    assert passages == ["First sentence here.", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx long tail", "words. Last one."]
    assert " ".join(passages) == text.strip()  # in order, cut between words


def test_terms_stem_english_and_use_chinese_characters_and_bigrams():
    assert terms("The Rivers and the flowing") == ["river", "flow"]  # stopwords out, stems in
    assert terms("亚里士多德") == ["亚", "里", "士", "多", "德", "亚里", "里士", "士多", "多德"]


def test_the_index_finds_articles_by_title_in_english_and_chinese(rag_data):
    index = Index.open(rag_data)
    english = [a for a in read_articles(rag_data) if not re.search("[\u4e00-\u9fff]", a["title"])]
    hits = [index.search(f"What is {a['title']}?", 1)[0].title for a in english]
    assert sum(h == a["title"] for h, a in zip(hits, english)) >= 0.95 * len(english)
    for title, _ in ZH:
        assert index.search(f"{title}是什么？", 1)[0].title == title
    assert index.search("???", 3) == []  # no term at all: nothing, not an error


def test_a_question_in_traditional_characters_finds_an_article_in_simplified_ones(rag_data, tmp_path):
    """zhwiki's articles are in either script, and so are questions: 熊貓 (traditional) found no
    熊猫. An index built before (its info without "cjk") is searched with Chinese as written."""
    assert terms("臺北的貓") == terms("台北的猫")
    index = Index.open(rag_data)
    assert index.info["cjk"] == "simplified"
    assert [p.title for p in index.search("貓", 1)] == ["熊猫"]  # 猫 only in 熊猫's text
    assert index.search("熊貓生活在哪裡？", 1)[0].title == "熊猫"
    old = tmp_path / "old"
    shutil.copytree(rag_data, old)
    info = json.loads((old / "index" / "wikigpt_index.json").read_text())
    del info["cjk"]
    (old / "index" / "wikigpt_index.json").write_text(json.dumps(info))
    assert Index.open(old).search("貓", 1) == []  # its terms as written: what an older index holds


def test_the_index_reads_passages_by_number_and_gives_bm25_idf(rag_data):
    index = Index.open(rag_data)
    first = next(read_articles(rag_data))
    assert index.passage(0).title == first["title"] and index.passages[0]["text"] in first["text"]
    assert len(index.passages) == index.info["passages"]
    rare, absent = index.idf(terms(first["title"])[0]), index.idf("zzzznotaterm")
    n = index.info["passages"]
    assert absent == pytest.approx(math.log(1 + (n + 0.5) / 0.5)) and 0 < rare < absent


def test_a_killed_index_build_resumes_where_it_stopped_and_gives_the_same_answers(rag_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(rag_data, data, ignore=shutil.ignore_patterns("index"))
    build_index(data, quiet=True, commit_every=20, workers=2, stop_after=25)  # as if killed after 25 articles
    assert not (data / "index").exists() and (data / "index.tmp" / "progress.json").is_file()
    info = build_index(data, quiet=True, commit_every=20)
    assert 0 < info["resumed_after_articles"] <= 25 and info["passages"] == Index.open(rag_data).info["passages"]
    resumed, whole = Index.open(data), Index.open(rag_data)
    for a in list(read_articles(rag_data))[::5]:
        q = f"What is {a['title']}?"
        assert [(p.title, p.text) for p in resumed.search(q, 3)] == [(p.title, p.text) for p in whole.search(q, 3)]


def test_a_crash_as_a_rebuilt_index_is_swapped_in_leaves_the_old_one_and_its_thresholds(rag_data, tmp_path, monkeypatch):
    import wikigpt.prep.workdir as workdir
    data = tmp_path / "data"
    shutil.copytree(rag_data, data)
    before = Index.open(data).info

    def crash(*args):
        raise KeyboardInterrupt  # the process killed as the new index goes in
    monkeypatch.setattr(workdir, "_exchange", crash)  # the swap (Linux)
    monkeypatch.setattr("wikigpt.knowledge.index_build.replace_durably", crash, raising=False)  # delete-then-rename
    with pytest.raises(KeyboardInterrupt):
        build_index(data, quiet=True)
    assert Index.open(data).info == before  # the old index, whole, its stored threshold with it


def test_an_index_of_the_old_format_says_rebuild_in_one_line(rag_data, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(rag_data, old)
    info = json.loads((old / "index" / "wikigpt_index.json").read_text())
    (old / "index" / "wikigpt_index.json").write_text(json.dumps(info | {"version": 1}))  # a bm25s index
    r = run_cli("retrieve.py", "--data", old, "What is tea?")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and f"retrieve.py --data {old} --build" in r.stderr
    for name in ("corpus.jsonl", "params.index.json", "lead_ids.npy"):  # some of what bm25s saved there
        (old / "index" / name).write_text("{}")
    (old / "index" / "notes.txt").write_text("mine")  # ... and a user's file: refused, as in a current index
    with pytest.raises(UsageError, match="notes.txt, which retrieve.py --build did not write"):
        build_index(old, quiet=True, workers=1)
    assert (old / "index" / "notes.txt").read_text() == "mine" and (old / "index" / "corpus.jsonl").exists()
    (old / "index" / "notes.txt").unlink()
    build_index(old, quiet=True, workers=1)  # the rebuild it says to run replaces the old format's files too
    assert Index.open(old).info["version"] == INDEX_VERSION and not (old / "index" / "corpus.jsonl").exists()


# ----- grounded rows: the same rendering at training and at chat time

def test_a_build_stopped_before_choosing_its_threshold_says_so_where_the_index_is_read(rag_data, tmp_path, monkeypatch):
    """retrieve.py --build publishes the index, then chooses the "not found" threshold on the train
    split's questions: a kill between left an index judged by the default, and nothing said so."""
    import retrieve
    from wikigpt.knowledge.evidence import Reader

    data = tmp_path / "data"
    shutil.copytree(rag_data, data)

    def killed(*args):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(retrieve, "calibrate", killed)
        with pytest.raises(KeyboardInterrupt):
            retrieve.build(str(data), PASSAGE_CHARS)
    reader = Reader.open(data)
    assert "was never chosen" in reader.note and f"retrieve.py --data {data} --build" in reader.note
    r = run_cli("retrieve.py", "--data", data, "What is tea?")
    assert r.returncode == 0 and "was never chosen" in r.stdout, r.stderr
    stored = tmp_path / "stored"  # a threshold stored another way (bench_answers.py --calibrate): no note
    shutil.copytree(data, stored)
    add_index_info(stored, {"abstain_below": 0.8})
    assert Reader.open(stored).note == "" and Reader.open(stored).threshold == 0.8
    built = Index.open(data).info["generation"]
    retrieve.build(str(data), PASSAGE_CHARS)  # run again: the index is whole, only the threshold is chosen
    assert Reader.open(data).note == "" and isinstance(Index.open(data).info["calibration"], dict)
    assert Index.open(data).info["generation"] == built  # not built again (hours at the size of Wikipedia)


def test_an_index_info_file_cut_short_says_rebuild_in_one_line(rag_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(rag_data, data)
    info = data / "index" / "wikigpt_index.json"
    info.write_text(info.read_text()[:40])  # a hand edit gone wrong, or a copy cut short
    r = run_cli("retrieve.py", "--data", data, "What is a river?")
    assert r.returncode == 2 and "is not valid JSON" in r.stderr and "--build" in r.stderr and "Traceback" not in r.stderr


def test_grounded_rows_render_passages_exactly_as_chat_time_and_mask_only_the_answer(rag_data):
    tok = load_dataset(rag_data).tokenizer
    index, block = Index.open(rag_data), 256
    convs = list(wikiqa.grounded_conversations(rag_data, index, tok, block, seed=1))
    train_titles = {a["title"] for a in read_articles(rag_data, "train")}
    assert len(convs) > 20
    same = 0
    for user, answer in convs:
        question = user.content.rsplit("Question: ", 1)[1]
        chat_time, _, hits = evidence_prompt(reader_of(index), tok, [Message("user", question)],
                                             prompt_room(block, wikiqa.REPLY_TOKENS), block - 1)
        train_time, _ = render_chat(tok, [user], add_generation_prompt=True)
        if hits and user.content.startswith(f"Sources:\n[1] {hits[0].title}: {hits[0].text}\n"):
            assert train_time == chat_time  # same evidence first: identical prompt tokens
            same += 1
        ids, mask = next(rows_of(tok, [user, answer], block + 1, Counter()))
        learned = tok.decode([i for i, m in zip(ids, mask) if m])
        assert learned == answer.content + "<|end|>"
    assert same >= 5  # (a row's [1] is the sentence it answers with; retrieval agrees on the leads)
    # only train articles are asked about; out-of-corpus questions are answered "not found"
    val_titles = {a["title"] for a in read_articles(rag_data, "val")}
    questions = [u.content.rsplit("Question: ", 1)[1] for u, a in convs if not is_abstention(a.content)]
    assert all(any(t in q for t in train_titles) and not any(t in q for t in val_titles) for q in questions)
    assert any(is_abstention(a.content) for _, a in convs)


def test_held_out_questions_are_about_val_articles_only(rag_data):
    val = {a["title"] for a in read_articles(rag_data, "val")}
    items = wikiqa.qa_items(rag_data, "val", 3)
    assert items and {i.title for i in items} <= val
    assert all(i.answer in next(a["text"] for a in read_articles(rag_data) if a["title"] == i.title) for i in items)


def test_the_held_out_benchmark_asks_about_a_bounded_sample_of_the_val_articles(rag_data, monkeypatch):
    """chat_sft.py's QA report built questions for every val article: ~200 k of them on enwiki,
    each retrieved and answered by the model (hours). A small split is asked about whole."""
    reader = reader_of(Index.open(rag_data))
    val = {a["title"] for a in read_articles(rag_data, "val")}
    asked = {i.title for i in wikiqa.benchmark_items(rag_data, reader)} - {""}  # "": out of corpus
    assert asked == val  # each val article has a lead question at least
    monkeypatch.setattr(wikiqa, "BENCHMARK_ARTICLES", 3)
    fewer = {i.title for i in wikiqa.benchmark_items(rag_data, reader)} - {""}
    assert len(val) > 3 and len(fewer) == 3 and fewer <= val


def test_template_questions_come_from_a_bounded_sample_of_the_train_split(rag_data, monkeypatch):
    """The learned confidence's and ranker's template rows read a sample of the train split, not
    all of it into memory (a full dump's train split is millions of articles)."""
    from wikigpt.knowledge import natural, qa_items

    given, real = [], qa_items.train_items
    monkeypatch.setattr(qa_items, "train_items", lambda f, r, articles, seed=0: given.append(articles) or real(f, r, articles, seed))
    monkeypatch.setattr(natural, "TEMPLATE_ARTICLES", 5)
    reader = reader_of(Index.open(rag_data))
    natural.template_confidence_rows(rag_data, reader, n=4)
    natural.template_rows(rag_data, reader)
    train = {a["title"] for a in read_articles(rag_data, "train")}
    assert len(given) == 2 and all(len(a) == 5 and {x["title"] for x in a} <= train for a in given)
    assert len(train) > 5


def test_fit_grounded_shares_the_context_and_cuts_the_last_passage(rag_data):
    tok = load_dataset(rag_data).tokenizer
    passages = [("A", "alpha " * 200), ("B", "beta " * 200)]
    ids, kept, used = fit_grounded(tok, [Message("user", "What is A?")], passages, room=120)
    assert len(ids) <= 120 and 1 <= len(used) and used[0][1].endswith("...")
    assert kept[-1].content.endswith("Question: What is A?")
    # a conversation that fills the context: its oldest exchanges give way to the best source
    talk = [Message("system", "Be brief.")] + [Message(r, f"turn {i}")  # short turns: little slack
                                               for i in range(40) for r in ("user", "assistant")]
    ids, kept, used = fit_grounded(tok, talk + [Message("user", "What is A?")], passages, room=120)
    assert len(ids) <= 120 and used and used[0][0] == "A"
    assert kept[0].content == "Be brief." and kept[-1].content.endswith("Question: What is A?")
    assert len(kept) < len(talk) + 1
    for odd in ([Message("assistant", "Hello! " * 10)], [Message("system", "Hi " * 5), Message("user", "x " * 10)]):
        talk = odd + [Message("user", "What is A?")]  # no whole exchange before the question to drop
        room = len(render_chat(tok, talk, add_generation_prompt=True)[0]) + 5  # no source fits
        ids, kept, used = fit_grounded(tok, talk, passages, room=room)
        assert kept == talk and not used  # the question stays, unsourced, rather than lost


def test_scores():
    assert scores.token_f1("A river in Spain", "a river of Spain") == pytest.approx(0.75)
    assert scores.rouge_l("the cat sat", "the cat sat") == 1.0 and scores.token_f1("x", "y") == 0.0
    assert scores.token_f1("长江是河", "长江是中国最长的河流") > 0.4  # characters for Chinese


# ----- end to end: SFT with grounded QA, the report, chat.py --rag, serve.py --rag

@pytest.fixture(scope="module")
def rag_chat(rag_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rag_chat")
    shape = [a for a in TINY if not a.startswith(("--n_embd", "--block_size", "--n_head"))]
    shape += ["--n_embd=64", "--n_head=4", "--block_size=256"]
    r = run_cli("train.py", f"--data={rag_data}", f"--out_dir={out / 'pre'}", "--max_steps=30",
                "--eval_interval=30", *shape)
    assert r.returncode == 0, r.stderr
    dialogues = out / "d.jsonl"
    dialogues.write_text("".join(json.dumps({"prompt": "Hello", "response": "Hello! How are you?"}) + "\n"
                                 for _ in range(20)))
    r = run_cli("chat_sft.py", f"--init_from={out / 'pre' / 'last.pt'}", f"--out_dir={out / 'chat'}",
                f"--data={rag_data}", f"--sft_data={dialogues}", "--grounded_qa=6", "--max_steps=70",
                "--eval_interval=35", "--eot_check=0", "--qa_eval=3", *shape, "--lr=0.003")
    assert r.returncode == 0, r.stderr
    return out / "chat" / "best.pt", r.stdout


def test_retrieval_improves_held_out_answers(rag_chat):
    ckpt, stdout = rag_chat
    assert "held-out Wikipedia QA" in stdout
    report = json.loads((ckpt.parent / "qa_report.json").read_text())
    assert report["recall@5"] >= 0.9
    assert report["with retrieval"]["f1"] > 2 * report["without retrieval"]["f1"], report
    assert report["with retrieval, copying"]["f1"] > 3 * report["without retrieval"]["f1"], report
    kinds = report["kinds"]
    assert kinds["lead"]["questions"] > 0 and kinds["out-of-corpus"]["questions"] > 0
    assert kinds["lead"]["with retrieval, copying"]["accuracy"] >= 0.8  # the opening sentence, copied whole
    assert kinds["out-of-corpus"]["with retrieval, copying"]["abstained"] >= 0.9
    assert report["abstention"]["with retrieval, copying"]["answered"] >= 0.9
    assert "out-of-corpus" in stdout and "abstention" in stdout  # the per-kind table


def test_the_copy_mixture_moves_mass_only_for_rows_that_copy():
    logits = torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0]])  # the model is sure of 1
    q = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])  # the evidence says 2
    mixed = mix_dense(logits, q, torch.tensor([0.5, 0.0]))
    assert int(mixed[0].argmax()) == 2 and torch.allclose(mixed[0].exp().sum(), torch.tensor(1.0))
    assert torch.allclose(mixed[0].exp(), 0.5 * torch.softmax(logits[0], -1) + 0.5 * q[0])
    assert torch.equal(mixed[1], logits[1])  # weight 0: the model alone, exactly


def test_chat_rag_prints_its_sources(rag_chat, rag_data):
    title = next(read_articles(rag_data, "val"))["title"]
    r = run_cli("chat.py", "--ckpt", rag_chat[0], "--rag", "--prompt", f"What is {title}?",
                "--temperature", "0", "--max_new_tokens", "30")
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^  \[1\] {re.escape(title)}: article lead$", r.stdout, re.M)  # the source, after the reply


def test_chat_rag_answers_small_talk_with_the_model_alone(rag_chat):
    r = run_cli("chat.py", "--ckpt", rag_chat[0], "--rag", "--temperature", "0", "--max_new_tokens", "8",
                input="Hello! How are you today?\nWhat is the capital of Ruritania?\n")
    assert r.returncode == 0, r.stderr
    replies = re.findall(r"^bot> (.*)$", r.stdout, re.M)
    assert len(replies) == 2 and not is_abstention(replies[0]) and is_abstention(replies[1]), r.stdout


def test_serve_rag_copies_the_evidence_or_says_not_found(rag_chat, rag_data):
    import httpx
    from live_server import LiveServer

    title = next(read_articles(rag_data, "val"))["title"]
    best = reader_of(Index.open(rag_data)).find(f"What is {title}?").best
    s = LiveServer(rag_chat[0], "--rag")
    try:
        ask = lambda q, **kw: httpx.post(s.url + "/v1/chat/completions", timeout=60, json={  # noqa: E731
            "messages": [{"role": "user", "content": q}], "max_tokens": 60, "temperature": 0} | kw).json()
        r = ask(f"What is {title}?")
        assert r["sources"][0]["title"] == title and r["sources"][0]["label"] == "article lead"
        assert r["choices"][0]["message"]["content"] == best.text  # the best evidence, copied to its end
        generated = lambda: float(re.search(r"^wikigpt_completion_tokens_total (\S+)$",  # noqa: E731
                                            httpx.get(s.url + "/metrics").text, re.M)[1])
        before = generated()
        r = ask("What is the capital of Ruritania?", n=2, logprobs=True)
        assert all(is_abstention(c["message"]["content"]) for c in r["choices"])  # nothing invented
        assert all(c["logprobs"] is None for c in r["choices"])  # said, not the model's: no logprobs to give
        assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] > 0
        assert generated() == before  # said, not generated
        with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=60, json={"stream": True, "n": 2,
                          "max_tokens": 4, "messages": [{"role": "user", "content": "What is the capital of Ruritania?"}]}) as events:
            chunks = [json.loads(line[6:]) for line in events.iter_lines() if line.startswith("data: {")]
        texts, ends = {}, {}
        for c in chunks:
            for choice in c["choices"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["delta"].get("content", "")
                ends[choice["index"]] = choice["finish_reason"] or ends.get(choice["index"])
        assert ends == {0: "length", 1: "length"} and texts[0] == texts[1]  # cut at max_tokens, as any reply
        assert texts[0] and ABSTAIN["en"].startswith(texts[0])
        r = ask("What is the capital of Ruritania?", copy=0, logprobs=True)  # the model alone: it writes its reply
        assert generated() > before
        assert r["choices"][0]["logprobs"]["content"]  # and its tokens' logprobs
        r = ask(f"What is {title}?", rag=False)
        assert "sources" not in r
        before = generated()
        r = ask("Hello! How are you today?")  # small talk: the model alone, not "not found" and the closest
        assert "sources" not in r and not is_abstention(r["choices"][0]["message"]["content"])
        assert generated() > before
        r = httpx.post(s.url + "/v1/chat/completions", timeout=60, json={"messages": [{"role": "user", "content": " "}]})
        assert r.status_code == 400 and "no question to look up" in r.json()["error"]["message"]
        assert ask(f"What is {title}?")["choices"][0]["message"]["content"] == best.text  # still serving
    finally:
        s.stop()


# ----- bad input: one clear paragraph, exit 2, nothing damaged

def test_bad_retrieval_input_gets_clear_errors(rag_data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(rag_data, other)
    r = run_cli("retrieve.py", "--data", other, "")
    assert r.returncode == 2 and "give a query" in r.stderr
    info = (other / "index" / "wikigpt_index.json").read_bytes()
    r = run_cli("retrieve.py", "--data", other, "--build", "--k", "0", "What is tea?")  # before: built, then refused
    assert r.returncode == 2 and "--k must be at least 1" in r.stderr and "indexed" not in r.stdout
    assert (other / "index" / "wikigpt_index.json").read_bytes() == info
    r = run_cli("retrieve.py", "--data", other / "meta.json", "What is tea?")  # before: "no such folder ... --out .../meta.json"
    assert r.returncode == 2 and f"--data {other / 'meta.json'} is a file: give the dataset folder" in r.stderr
    shutil.rmtree(other / "index")
    r = run_cli("retrieve.py", "--data", other, "What is tea?")
    assert r.returncode == 2 and "has no retrieval index yet" in r.stderr and "--build" in r.stderr
    shutil.copytree(rag_data / "index", other / "index")
    with open(other / "articles.jsonl.gz", "ab") as f:  # other articles than the index was built from
        f.write(b"\0")
    with pytest.raises(DatasetError, match="built from other articles"):
        Index.open(other)
    (other / "articles.jsonl.gz").unlink()
    r = run_cli("retrieve.py", "--data", other, "--build")
    assert r.returncode == 2 and "has no kept articles" in r.stderr and "Traceback" not in r.stderr
    assert (other / "index" / "wikigpt_index.json").is_file()  # the old index is left alone
    title = next(read_articles(rag_data))["title"]
    assert Index.open(rag_data).search(f"What is {title}?", 1)[0].title == title  # the original still works


@pytest.mark.parametrize("damage", ["empty passages.sqlite", "cut passages.sqlite", "no titles", "no passages store",
                                    "cut lead_ids"])
def test_a_damaged_index_is_one_error_that_says_to_rebuild_it(rag_data, tmp_path, damage):
    """Only the info file was checked: a part of the index emptied, cut short or missing was a
    sqlite3, tantivy or mmap traceback in retrieve.py, chat.py --rag and serve.py --rag."""
    data = tmp_path / "data"
    shutil.copytree(rag_data, data)
    index = data / "index"
    if damage == "empty passages.sqlite":
        (index / "passages.sqlite").write_bytes(b"")
    elif damage == "cut passages.sqlite":
        size = (index / "passages.sqlite").stat().st_size
        os.truncate(index / "passages.sqlite", size // 2)
    elif damage == "no titles":
        shutil.rmtree(index / "titles")
    elif damage == "no passages store":
        for store in (index / "passages").glob("*.store"):
            store.unlink()
    else:
        os.truncate(index / "lead_ids.i64", 3)
    with pytest.raises(DatasetError, match=rf"index is damaged \(.*\)\. Rebuild it: python retrieve.py --data {data} --build"):
        Index.open(data)


def test_output_into_a_closed_pipe_stops_quietly(rag_data):
    """`retrieve.py ... | head -1`: the reader leaves before the output is written; no traceback."""
    title = next(read_articles(rag_data))["title"]
    proc = subprocess.Popen([sys.executable, "retrieve.py", "--data", str(rag_data), "--k", "5", f"What is {title}?"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the process has imported torch, let alone printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_a_broken_pipe_that_is_not_standard_output_is_still_an_error():
    """Only a reader leaving our output is quiet: a socket or a worker's pipe breaking is not."""
    def main(argv):
        raise BrokenPipeError("a worker's pipe")
    with pytest.raises(BrokenPipeError):
        run_main(main)


def test_a_misspelt_dataset_folder_is_pointed_to_the_one_beside_it(tiny_data, tmp_path):
    """`--data data/dmeo` said to build data/dmeo, the misspelt name, with prepare_wiki.py."""
    shutil.copytree(tiny_data, tmp_path / "demo")
    for command in (["retrieve.py", "--data", tmp_path / "dmeo", "What is tea?"],
                    ["train.py", f"--data={tmp_path / 'dmeo'}", f"--out_dir={tmp_path / 'out'}"]):
        r = run_cli(*command)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert f"{tmp_path / 'dmeo'}: no such folder. Did you mean {tmp_path / 'demo'}?" in r.stderr
    r = run_cli("retrieve.py", "--data", tmp_path / "other", "What is tea?")  # nothing close: build it
    assert f"Build the dataset first, e.g. `python prepare_wiki.py --out {tmp_path / 'other'}`" in r.stderr
