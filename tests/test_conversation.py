"""Conversations answered from Wikipedia: chat.py --rag and serve.py --rag read the evidence in
the whole conversation (a follow-up that names nothing is about the entity before it; /reset, or
a new messages list, carries nothing), the sources under a reply are the follow-up's own and say
what they are, and a request turns grounding off with "rag": false (the page's switch)."""
import json
import re

import httpx
import pytest
from conftest import PROSE, TINY, dump_xml, page, run_cli

from prepare_wiki import main as prepare
from wikigpt.knowledge.replies import is_abstention
from wikigpt.knowledge.grounding import listed, sources_of
from wikigpt.knowledge.retrieval import build_index

VALLEY = """{{Infobox country
|capital = [[Stonebridge]]
|established_date1 = 1278
}}
'''Brindavale''' is a landlocked valley state in the high mountains.
== Economy ==
The economy of Brindavale rests on cheese, clocks and the toll of the mountain pass. """
LEAD = "Brindavale is a landlocked valley state in the high mountains."
FILLER = ["Mountain", "River", "Harbour", "Meadow", "Island", "Desert"]
SHAPE = [a for a in TINY if not a.startswith("--block_size")] + ["--block_size=256"]


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    """A dataset with one infobox article and its index, and a chat checkpoint on its tokenizer
    (trained a few steps only: with copying on, a reply reads the evidence back, so the replies
    are known whatever the model learned)."""
    root = tmp_path_factory.mktemp("conversation")
    pages = [page("Brindavale", VALLEY + PROSE * 8)]
    pages += [page(t, f"'''{t}''' is a [[{t.lower()}]] of the old country. " + PROSE * 8) for t in FILLER]
    (root / "dump.xml").write_text(dump_xml(*pages), encoding="utf-8")
    data = root / "data"
    prepare([str(root / "dump.xml"), "--out", str(data), "--tokenizer", "bpe:400", "--min_chars", "50",
             "--val_fraction", "0.1", "--workers", "1"])
    build_index(data, quiet=True)
    r = run_cli("train.py", f"--data={data}", f"--out_dir={root / 'pre'}", "--max_steps=2", "--eval_interval=2", *SHAPE)
    assert r.returncode == 0, r.stderr
    dialogues = root / "d.jsonl"
    dialogues.write_text("".join(json.dumps({"prompt": "Hello", "response": "Hello!"}) + "\n" for _ in range(20)))
    r = run_cli("chat_sft.py", f"--init_from={root / 'pre' / 'last.pt'}", f"--out_dir={root / 'chat'}",
                f"--data={data}", f"--sft_data={dialogues}", "--max_steps=2", "--eval_interval=2", "--eot_check=0",
                "--sft_val_fraction=0.1", *SHAPE)
    assert r.returncode == 0, r.stderr
    return data, root / "chat" / "last.pt"


def chat(talk, lines):
    data, ckpt = talk
    r = run_cli("chat.py", "--ckpt", ckpt, "--rag", "--data", data, "--temperature", "0", "--max_new_tokens", "40",
                input="".join(line + "\n" for line in lines))
    assert r.returncode == 0, r.stderr
    turns = r.stdout.split("you> ")[1:]  # each: the question, the reply, its sources
    return [t.split("bot> ", 1)[1] if "bot> " in t else t for t in turns]


def test_chat_answers_a_follow_up_from_the_entity_before_it_and_lists_its_own_sources(talk):
    first, follow_up = chat(talk, ["What is Brindavale?", "What is its capital?"])
    assert first.startswith(LEAD + "\n") and re.search(r"^  \[1\] Brindavale: article lead$", first, re.M)
    assert follow_up.startswith("Stonebridge\n")  # "its": Brindavale's, carried from the question before
    assert re.search(r'^  \[1\] Brindavale: infobox field "capital"$', follow_up, re.M), follow_up


def test_chat_reset_clears_the_entity_a_follow_up_would_carry(talk):
    replies = chat(talk, ["What is Brindavale?", "/reset", "What is its capital?"])
    assert "(conversation cleared)" in replies[1]
    assert is_abstention(replies[2].splitlines()[0])  # nothing named, nothing carried: "not found"


def test_sources_say_what_they_are_and_no_title_is_listed_twice_alike(talk):
    from wikigpt.knowledge.evidence import Reader

    reader = Reader.open(talk[0])
    found = reader.find("Tell me about the economy of Brindavale.")
    shown = [s for _, s in listed(sources_of(found))]
    assert shown[0].label == 'Brindavale: section "Economy"'
    labels = [s.label for s in shown]
    assert len(labels) == len(set(labels)) and all(s.article == "Brindavale" for s in shown[:2])
    assert {s.what for s in listed_sources(reader, "What is Brindavale?")} >= {"article lead"}


def listed_sources(reader, question):
    return [s for _, s in listed(sources_of(reader.find(question)))]


# ----- serve.py --rag: the messages list is the conversation

@pytest.fixture(scope="module")
def rag_server(talk):
    from live_server import LiveServer

    s = LiveServer(talk[1], "--rag", "--data", str(talk[0]))
    yield s
    s.stop()


def test_the_server_answers_a_follow_up_from_the_messages_with_the_openai_sdk(rag_server):
    import openai

    client = openai.OpenAI(base_url=rag_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "What is Brindavale?"}]
    first = client.chat.completions.create(model="wikigpt", messages=messages, temperature=0, max_tokens=40)
    assert first.choices[0].message.content == LEAD and first.model_extra["sources"][0]["label"] == "article lead"
    messages += [{"role": "assistant", "content": LEAD}, {"role": "user", "content": "What is its capital?"}]
    follow_up = client.chat.completions.create(model="wikigpt", messages=messages, temperature=0, max_tokens=40)
    assert follow_up.choices[0].message.content == "Stonebridge"
    sources = follow_up.model_extra["sources"]
    assert sources[0] | {"text": ""} == {"title": "Brindavale", "label": 'infobox field "capital"', "number": 1,
                                          "url": sources[0]["url"], "text": ""}
    assert len({(s["title"], s["label"]) for s in sources}) == len(sources)  # never the same title alike twice
    alone = client.chat.completions.create(model="wikigpt", messages=messages[-1:], temperature=0, max_tokens=40)
    assert is_abstention(alone.choices[0].message.content)  # a new conversation carries nothing


def test_rag_false_turns_grounding_off_for_one_request_and_anything_else_is_a_400(rag_server):
    url = rag_server.url + "/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "What is the capital of Brindavale?"}], "temperature": 0,
            "max_tokens": 20}
    off = httpx.post(url, json=body | {"rag": False}, timeout=60).json()
    assert "sources" not in off and off["choices"][0]["message"]["content"] != "Stonebridge"  # the model alone
    on = httpx.post(url, json=body, timeout=60).json()
    assert on["choices"][0]["message"]["content"] == "Stonebridge" and on["sources"]  # the next one grounded again
    for bad in ("no", 0, None):
        r = httpx.post(url, json=body | {"rag": bad}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["message"] == "'rag' must be true or false"


def test_the_page_answers_from_wikipedia_and_its_switch_turns_that_off_for_the_conversation(rag_server):
    from playwright.sync_api import sync_playwright

    def ask(page, question, n):
        page.fill("#input", question)
        page.press("#input", "Enter")
        page.wait_for_function(f"document.querySelectorAll('.msg.assistant').length === {n} && "
                               "!document.querySelector('.msg.assistant.streaming')", timeout=30_000)
        return page.locator(".msg.assistant").last

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.add_init_script("localStorage.setItem('wikigpt.temperature', '0')")
            sent = []
            page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.method == "POST" else None)
            page.goto(rag_server.url + "/")
            page.wait_for_selector("#rag-row", state="visible")  # /health says the server reads articles
            assert page.is_checked("#rag")
            reply = ask(page, "What is the capital of Brindavale?", 1)
            assert reply.inner_text().startswith("Stonebridge")
            assert page.locator(".sources li").first.inner_text() == 'Brindavale · infobox field "capital"'
            assert sent[-1]["rag"] is True
            page.uncheck("#rag")  # the model alone for the rest of this conversation
            reply = ask(page, "What is the capital of Brindavale?", 2)
            assert sent[-1]["rag"] is False and reply.locator(".sources").count() == 0
            page.click("#new-chat")
            assert page.is_checked("#rag")  # a new conversation answers from Wikipedia again
        finally:
            browser.close()
