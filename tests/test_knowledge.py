"""The knowledge graph (infobox facts, aliases, links in knowledge.sqlite), entity linking,
evidence ranking, honest "not found", evidence-bounded copying, and their bad input."""
import json
import re
import shutil
import sqlite3
import unicodedata
from dataclasses import replace

import pytest
from conftest import PROSE, dump_xml, page, run_cli

from prepare_wiki import main as prepare
from wikigpt.chat.chat_template import Message, render_chat
from wikigpt.cli import UsageError
from wikigpt.prep.data import DatasetError, load_dataset, read_articles
from wikigpt.knowledge.evidence import Reader
from wikigpt.knowledge.replies import ABSTAIN, EvidenceCopy, is_abstention, not_found
from wikigpt.knowledge.grounding import copy_plan, evidence_prompt
from wikigpt.knowledge.graph import NAME_FACTS, OTHER_NAME, PLURAL, Knowledge, KnowledgeWriter, name_key
from wikigpt.prep.facts import article_knowledge, facts, is_person, lead_abbreviation
from wikigpt.prep.templates import render_templates
from wikigpt.prep.wikitext import CleanSettings, clean_wikitext
from wikigpt.knowledge.qa_items import ZH_WORDS, calibrate
from wikigpt.knowledge.retrieval import Index, Passage, add_index_info, build_index
from wikigpt.decoding.sampling import SamplingParams
from wikigpt.knowledge import wikiqa

ANDORRA = """{{Infobox country
|conventional_long_name = Principality of Andorra
|image_flag      = Flag of Andorra.svg
|capital         = [[Andorra la Vella]]
|official_languages = [[Catalan language|Catalan]]<sup>a</sup>
|recognised_languages = {{hlist|[[Spanish language|Spanish]]|[[French language|French]]}}
|leader_title1   = [[Head of Government of Andorra|Prime Minister]]
|leader_name1    = [[Antoni Martí]]
|area_km2        = 467.63
|population_estimate = 85,470<ref name="cia">{{cite web|url=http://x.org|title=Y}}</ref>
|established_date1 = {{birth date|1278|9|8}}
|latd = 42
}}
'''Andorra''' is a landlocked microstate in [[europe|southwestern Europe]]. It is less than {{convert|72|km|mi}} from [[Italy]].

== Economy ==
Tourism is the mainstay of the tiny economy of Andorra. Banking also matters.

== History ==
=== Early history ===
Charlemagne granted a charter to the people of Andorra in 805. Later counts ruled it.

== Culture ==
Source: the national archive
Catalan culture shapes the festivals of Andorra.

== Gallery ==
Photos by the tourism office
and by visitors.

== Parishes ==
Andorra consists of seven parishes:
* Canillo
* Encamp
"""
FILLER = ["Mountain", "River", "Valley", "Lake", "Forest", "Glacier", "Harbour", "Meadow", "Island", "Desert"]


@pytest.fixture(scope="module")
def kb_data(tmp_path_factory):
    """Andorra with its infobox, a capital, a Chinese article, two redirects (one to a page the
    dump lacks) and filler articles, prepared and indexed, the threshold chosen."""
    root = tmp_path_factory.mktemp("kb")
    pages = [page("Andorra", ANDORRA + PROSE * 2),
             page("Andorra la Vella", "'''Andorra la Vella''' is the capital of [[Andorra]]. " + PROSE * 2),
             page("长江", "{{Infobox river|length = {{convert|6300|km}}|mouth = [[东海]]}}'''长江'''是亚洲第一长河。"
                  + "长江流域是中华文明的发源地之一。" * 8),
             page("Principality of Andorra", "#REDIRECT [[Andorra]]", redirect="Andorra"),
             page("Lost page", "#REDIRECT [[Not in this dump]]", redirect="Not in this dump")]
    pages += [page(t, f"'''{t}''' is a [[{t.lower()}]] near [[Ruritania]] and [[Zembla]]. " + PROSE * 2) for t in FILLER]
    (root / "dump.xml").write_text(dump_xml(*pages), encoding="utf-8")
    prepare([str(root / "dump.xml"), "--out", str(root / "data"), "--tokenizer", "bpe:400", "--min_chars", "50",
             "--val_fraction", "0.2", "--workers", "1"])
    build_index(root / "data", quiet=True)
    add_index_info(root / "data", calibrate(root / "data", Reader.open(root / "data")))
    return root / "data"


@pytest.fixture(scope="module")
def reader(kb_data):
    return Reader.open(kb_data)


# ----- reading the wikitext

def test_infobox_fields_become_facts_with_plain_text_values():
    got = dict(facts(ANDORRA))
    assert got["capital"] == "Andorra la Vella"  # the link's text
    assert got["official languages"] == "Catalan"  # no footnote mark
    assert got["recognised languages"] == "Spanish, French"  # a list, joined
    assert got["prime minister"] == "Antoni Martí"  # leader_title1 / leader_name1 paired
    assert got["area"] == "467.63 km²"  # the unit of area_km2 kept with the number
    assert got["population estimate"] == "85,470"  # the ref gone
    assert "image flag" not in got and "latd" not in got  # layout, not knowledge


GERMANY = "{{国家信息框\n|首都=[[柏林]]\n|人口=8300万\n|图像=Flag.svg\n}}'''德国'''是欧洲中部的国家。"


def test_zhwiki_infoboxes_are_read_with_their_chinese_field_names_and_answer_chinese_questions(tmp_path):
    assert facts(GERMANY) == [("首都", "柏林"), ("人口", "8300万")]
    assert facts("{{人物資訊框|出生地=[[乙]]}}{{ 城市信息框 |面积=3 km²}}") == [("出生地", "乙"), ("面积", "3 km²")]
    pages = [page("德国", GERMANY + "德国的经济规模很大，工业发达。" * 8),
             page("柏林", "'''柏林'''是[[德国]]的城市。" + "柏林有很多博物馆和公园。" * 8)]
    pages += [page(t, f"'''{t}''' is a [[{t.lower()}]] near [[Ruritania]]. " + PROSE * 2) for t in FILLER[:3]]
    (tmp_path / "dump.xml").write_text(dump_xml(*pages), encoding="utf-8")
    prepare([str(tmp_path / "dump.xml"), "--out", str(tmp_path / "data"), "--tokenizer", "bpe:400",
             "--min_chars", "50", "--val_fraction", "0.2", "--workers", "1"])
    build_index(tmp_path / "data", quiet=True)
    reader = Reader.open(tmp_path / "data")
    for question, value in [("德国的首都是哪里？", "柏林"), ("德国的人口是多少？", "8300万")]:
        found = reader.find(question)  # the field's own name, 首都, covers the question's word
        assert found.answerable and (found.best.kind, found.best.text) == ("fact", value), found.items[:3]

def test_an_exponent_in_sup_is_kept_in_superscript_and_a_footnote_mark_goes_in_facts_and_prose_alike():
    marked = ("1.496×10<sup>8</sup> km, 9.8 m/s<sup>−2</sup>, 3 km<sup>2</sup>, came 1<sup>st</sup>; "
              "[[Catalan language|Catalan]]<sup>a</sup> and 5<sup>[1]</sup>")
    shown = "1.496×10⁸ km, 9.8 m/s⁻², 3 km², came 1st; Catalan and 5"  # before: "1.496×10 km" ("108" in prose)
    assert dict(facts("{{Infobox planet\n|orbit = " + marked + "\n}}"))["orbit"] == shown
    (_, text), _ = clean_wikitext("Earth", "The orbit is " + marked + ".", CleanSettings(min_chars=10))
    assert text == "The orbit is " + shown + "."
    # the rest reads as it is written (a review: ions, isotopes, orbitals and a variable's powers were lost)
    science = "H<sup>+</sup> and OH<sup>−</sup>; E = mc<sup>2</sup>; <sup>137</sup>Cs in sp<sup>3</sup>, lbf/in<sup>2</sup>"
    (_, text), _ = clean_wikitext("Ions", "Ions: " + science + ". " + "More words. " * 3, CleanSettings(min_chars=10))
    assert text.startswith("Ions: H+ and OH−; E = mc2; 137Cs in sp3, lbf/in2.")
    assert clean_wikitext("Ten", "10<Sup>3</Sup> grams. " * 4, CleanSettings(min_chars=10))[0][1].startswith("10³ grams.")

def test_quantities_and_dates_render_as_the_page_shows_them():
    assert render_templates("{{convert|72|km|mi}}, {{convert|1|-|2|km}}, {{convert|20|C|F}}") == "72 km, 1–2 km, 20°C"
    assert render_templates("{{birth date|1889|4|20}} {{cite web|url=x}}") == "20 April 1889 "
    (_, text), _ = clean_wikitext("Andorra", ANDORRA, CleanSettings(min_chars=10))
    assert "It is less than 72 km from Italy." in text  # before: "It is less than from Italy."


def test_an_infobox_date_in_a_chinese_article_reads_as_chinese_writes_it():
    box = "{{Infobox person|birth_date = {{birth date|1879|3|14}}|death_date = {{death date|1955|4}}}}"
    zh = article_knowledge(box + "'''爱因斯坦'''是物理学家。", "爱因斯坦是物理学家，出生于德国。", {})
    assert zh["facts"] == [("birth date", "1879年3月14日"), ("death date", "1955年4月")]  # before: "14 March 1879"
    en = article_knowledge(box + "'''Einstein''' was a physicist.", "Einstein was a physicist.", {})
    assert en["facts"] == [("birth date", "14 March 1879"), ("death date", "April 1955")]

def test_prepare_stores_facts_aliases_links_and_sections_with_counts(kb_data):
    kb = Knowledge.open(kb_data)
    andorra = kb.subject("Andorra")
    assert ("capital", "Andorra la Vella") in kb.facts(andorra)
    assert kb.aliases(andorra) == ["Principality of Andorra"]  # the other redirect's target is not here
    assert "USING INDEX" in str(kb.db.execute("EXPLAIN QUERY PLAN SELECT alias FROM aliases WHERE subject = 1").fetchall())
    assert kb.links(andorra) == ["Europe", "Italy"]  # the text's links, in order, first letters folded up
    assert ("Economy", "Tourism is the mainstay of the tiny economy of Andorra.") in kb.sections(andorra)
    charter = "Charlemagne granted a charter to the people of Andorra in 805."
    assert ("History", charter) in kb.sections(andorra)  # opened by its first subsection's text
    assert ("Early history", charter) in kb.sections(andorra)
    sections = dict(kb.sections(andorra))  # a caption is passed over; a section of captions has no opening
    assert sections["Culture"] == "Catalan culture shapes the festivals of Andorra."
    assert "Gallery" not in sections and sections["Parishes"] == "Andorra consists of seven parishes:"
    assert ("length", "6300 km") in kb.facts(kb.subject("长江"))
    meta = load_dataset(kb_data).meta["knowledge"]
    assert meta == kb.counts and meta["aliases"] == 1 and meta["redirects"] == 2
    assert meta["facts"] == len(facts(ANDORRA)) + 2 and meta["infoboxes"] == 2


def test_the_names_table_built_in_sqlite_is_the_one_a_python_list_built(kb_data):
    """close() streams the names inside SQLite; the table is what the list-based writer made:
    titles, then redirects, then titles without their qualifier and name facts, first key wins."""
    db = Knowledge.open(kb_data).db
    names = [(name_key(t), no, 0) for no, t in db.execute("SELECT no, title FROM articles ORDER BY no")]
    names += [(name_key(a), no, 1) for a, no in db.execute("SELECT alias, subject FROM aliases ORDER BY rowid")]
    names += [(name_key(re.sub(r"\s*\([^()]*\)$", "", t)), no, 2)
              for no, t in db.execute("SELECT no, title FROM articles ORDER BY no")]
    names += [(name_key(v), s, 2) for s, v in db.execute(
        f"SELECT subject, value FROM facts WHERE attribute IN ({','.join('?' * len(NAME_FACTS))}) "
        "ORDER BY subject, ord", NAME_FACTS) if len(v) <= 80]
    expected = {}
    for key, subject, kind in names:
        if key:
            expected.setdefault(key, (key, subject, kind))
    assert db.execute("SELECT key, subject, kind FROM names ORDER BY key").fetchall() == sorted(expected.values())
    assert ("principality of andorra", 0, 1) in expected.values()  # a redirect, before the infobox's long name


def test_names_link_longest_first_case_folded_accents_aside_and_in_chinese(reader):
    assert [l.title for l in reader.links("what is ANDORRA LA VELLA?")] == ["Andorra la Vella"]
    assert [l.title for l in reader.links("Where is the principality of andorra?")] == ["Andorra"]  # a redirect
    assert [l.title for l in reader.links("长江有多长？")] == ["长江"]
    assert name_key("André  Agassi") == "andre agassi" and name_key("长江") == "长 江"


def test_people_are_linked_by_a_surname_only_one_has_plurals_by_their_singular_abbreviations_in_capitals(tmp_path):
    writer = KnowledgeWriter(tmp_path / "knowledge.sqlite")
    writer.article("Arthur Schopenhauer", {"person": is_person(
        "Arthur Schopenhauer (22 February 1788 – 21 September 1860) was a German philosopher.")})
    writer.article("Tom Johnston", {"facts": [("birth date", "1950")]})  # an infobox's person
    writer.article("Ann Johnston", {"person": is_person("Ann Johnston (born 1960) is a singer.")})
    writer.article("Aardvark", {})
    writer.article("World Health Organization", {"abbreviation": lead_abbreviation(
        "The World Health Organization (WHO) is an agency.")})
    writer.article("Algorithm", {})
    writer.article("Algorithms (journal)", {})
    writer.close()
    kb = Knowledge(sqlite3.connect(tmp_path / "knowledge.sqlite"), tmp_path / "knowledge.sqlite", {})
    assert [l.title for l in kb.link("When did Schopenhauer die?")] == ["Arthur Schopenhauer"]
    assert kb.link("Where was Johnston born?") == []  # two people have that surname: neither
    assert not any(map(is_person, ["Apollo 11 (July 16–24, 1969) was a spaceflight.",  # events, states: no one
                                   "Hundred Years' War (1337–1453) was a war.", "Ottoman Empire (1299–1922) was a state."]))
    assert is_person("Aristotle (384–322 BC) was a philosopher.") and is_person("Ann Lee (died 1784) was a preacher.")
    assert [l.title for l in kb.link("What does WHO stand for?")] == ["World Health Organization"]
    assert kb.link("who is he?") == []  # an abbreviation links only in capitals
    assert [(l.title, l.kind) for l in kb.link("where do aardvarks live")] == [("Aardvark", 3)]
    assert [l.title for l in kb.link("the journal Algorithms")] == ["Algorithms (journal)"]  # the exact name first


def test_the_names_a_lead_gives_in_bold_link_in_either_number(tmp_path):
    writer = KnowledgeWriter(tmp_path / "knowledge.sqlite")
    writer.article("Asphalt", {"names": ["Asphalt", "bitumen"]})
    writer.article("Actinopterygii", {"names": ["Actinopterygii", "ray-finned fishes"]})
    writer.close()
    kb = Knowledge(sqlite3.connect(tmp_path / "knowledge.sqlite"), tmp_path / "knowledge.sqlite", {})
    assert [(l.title, l.kind) for l in kb.link("why did bitumen ruin paintings")] == [("Asphalt", OTHER_NAME)]
    assert [(l.title, l.kind) for l in kb.link("how do ray-finned fish swim")] == [("Actinopterygii", PLURAL)]


def test_a_lead_names_its_subjects_abbreviation_in_its_first_brackets_only():
    assert lead_abbreviation("The American National Standards Institute (ANSI) is a non-profit.") == "ANSI"
    assert lead_abbreviation("International Atomic Time (TAI, from the French name) is a scale.") == "TAI"
    assert lead_abbreviation("The ampere (SI unit symbol: A) is the unit of current.") == ""  # a symbol's note
    assert lead_abbreviation("Transport in Angola comprises: railways (CFL) and roads.") == ""  # after the verb
    assert lead_abbreviation("Afghanistan (Pashto/Dari: Afganistan) is a country.") == ""


# ----- the graph read backwards (facts_naming)

NAMING_FACTS = {  # values as infoboxes hold them: punctuation, accents, capitals, scripts, FTS5's operators
    "Ayn Rand": [("notable works", "Atlas Shrugged, The Fountainhead"), ("birth place", "Saint Petersburg, Russian Empire")],
    "Émile Durkheim": [("influences", "Auguste Comte, Herbert Spencer, ÉMILE Boutroux"), ("known for", "Anomie")],
    "Jonas Savimbi": [("party", "UNITA (1966–2002)"), ("spouse", "Vinona Unita")],
    "Ankara": [("region", "Kırıkkale, İstanbul, İSTANBUL"), ("notes", "ſtar K-line, straße")],
    "Moscow": [("native name", "Москва"), ("motto", "ΟΔΟΣ μία, οδός"), ("sister city", "Vinona Unita")],
    "Lists": [("tags", 'foo_bar baz, C++ and "Best" of: NEAR(x y) - AND* OR NOT ^start {col}'),
              ("share", "50% of AC/DC, 1861–1865, cafe\u0301 x")],
    "喀布尔": [("国家", "阿富汗、伊朗"), ("河流", "长江流域"), ("作者", "《阿特拉斯耸耸肩》"), ("邻国", "喀布尔 阿富汗")],
    "Ångström": [("unit", "ångström, ÅNGSTRÖM, Ångström"), ("named after", "Anders Jonas Ångström")],
}


@pytest.fixture(scope="module")
def naming_kb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("naming")
    writer = KnowledgeWriter(folder / "knowledge.sqlite")
    for title, rows in NAMING_FACTS.items():
        writer.article(title, {"facts": rows})
    writer.close()
    return Knowledge.open(folder)


def scanned(kb, phrase: str, like: bool) -> list:
    """Every fact whose value holds the phrase as whole words, case aside unless the phrase is in
    capitals, by a scan of the whole table: facts_naming's rule. like=True: as the scan before the
    full-text index read them (value LIKE '%phrase%' first, which folds ASCII letters only)."""
    pattern = re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)", 0 if phrase.isupper() else re.I)
    fold = lambda s: s.translate({c: c + 32 for c in range(65, 91)})  # noqa: E731  LIKE's case
    return [(s, a, v, phrase) for s, a, v in kb.db.execute("SELECT subject, attribute, value FROM facts ORDER BY rowid")
            if pattern.search(v) and (not like or fold(phrase) in fold(v))]


def runs_of_words(values: list[str]) -> list[str]:
    """Every run of 1-3 words of the values, and each in lower case, capitals, title case and
    without its accents."""
    runs = {" ".join(w[i:i + n]) for w in (v.split() for v in values) for n in (1, 2, 3) for i in range(len(w) - n + 1)}
    plain = lambda s: "".join(c for c in unicodedata.normalize("NFD", s) if not unicodedata.combining(c))  # noqa: E731
    return sorted({f(r) for r in runs for f in (str, str.lower, str.upper, str.title, plain)})


def test_a_phrase_of_words_in_too_many_facts_is_not_looked_up(naming_kb, monkeypatch):
    """FTS5 checks the word order of every fact holding all of a phrase's words: "States United"
    read every fact naming the United States. A phrase whose rarest word is in more than
    MAX_PHRASE_FACTS facts is skipped; counts stop at the bound."""
    from wikigpt.knowledge import graph

    assert [naming_kb.facts_with_word(w, 10) for w in ("unita", "anomie", "zzzz")] == [3, 1, 0]
    assert naming_kb.facts_with_word("unita", 1) == 1  # counted up to the cap: a common word's count is cheap
    monkeypatch.setattr(graph, "MAX_PHRASE_FACTS", 1)
    assert naming_kb.facts_naming(["Vinona Unita"]) == []  # each word in two facts or more: over the bound
    assert naming_kb.facts_naming(["Unita"])  # one word: its look-up stops at its LIMIT, always made
    assert [v for _, _, v, _ in naming_kb.facts_naming(["Auguste Comte"])] == ["Auguste Comte, Herbert Spencer, ÉMILE Boutroux"]


def test_the_graph_read_backwards_finds_what_a_scan_of_every_fact_finds(naming_kb, kb_data):
    """Every run of 1-3 words of every value (and in other cases, without accents): the full-text
    index finds what the whole-word scan finds, in the same order, a batch of 40 as one by one.
    The scan it replaced (LIKE first) found the same, but where only a non-ASCII letter's case
    differs ('émile' -> 'ÉMILE', 'ıstanbul' -> 'İstanbul'), which LIKE does not fold."""
    for kb in (naming_kb, Knowledge.open(kb_data)):
        phrases = runs_of_words([v for v, in kb.db.execute("SELECT value FROM facts")])
        phrases += ["émile", "ıstanbul", "star", "strasse", "οδος", "МОСКВА", "阿富汗", "长江", "阿特拉斯耸耸肩", "东海", "café"]
        worded = [p for p in phrases if re.search(r"\w", p)]
        assert len(worded) > 80
        for phrase in worded:
            found = kb.facts_naming([phrase], limit=10_000)
            assert found == scanned(kb, phrase, like=False), phrase
            assert all(f in found for f in scanned(kb, phrase, like=True)), phrase
        for i in range(0, len(worded), 40):  # facts_naming's batch: longest first, each fact once
            batch, expected, seen = worded[i:i + 40], [], set()
            for phrase in sorted(batch, key=len, reverse=True):  # equally long ones in the order given
                for s, a, v, p in scanned(kb, phrase, like=False):
                    if (s, a) not in seen:
                        seen.add((s, a))
                        expected.append((s, a, v, p))
            assert kb.facts_naming(batch, limit=10_000) == expected
    assert [t for _, _, t, _ in naming_kb.facts_naming(["émile"])] == ["Auguste Comte, Herbert Spencer, ÉMILE Boutroux"]
    assert [t for _, _, t, _ in naming_kb.facts_naming(["UNITA"])] == ["UNITA (1966–2002)"]  # capitals: not Unita


def test_the_graph_read_backwards_in_chinese_finds_a_whole_run_of_characters(naming_kb, kb_data):
    """A CJK character is a word character to the whole-word check: the scan's LIKE found
    '长江' inside '长江流域', and the check threw it away; a run of characters between
    punctuation or spaces is found, as before."""
    values = lambda phrase, kb=naming_kb: [v for _, _, v, _ in kb.facts_naming([phrase])]  # noqa: E731
    assert values("阿富汗") == ["阿富汗、伊朗", "喀布尔 阿富汗"]
    assert values("阿特拉斯耸耸肩") == ["《阿特拉斯耸耸肩》"] and values("喀布尔 阿富汗") == ["喀布尔 阿富汗"]
    assert values("长江") == [] and values("伊朗") == ["阿富汗、伊朗"]
    kb = Knowledge.open(kb_data)
    assert [kb.title(s) for s, *_ in kb.facts_naming(["东海"])] == ["长江"]  # the river whose mouth is the East Sea


@pytest.mark.parametrize("phrase", ['"Best" of', 'NEAR(x y)', "AND*", "OR NOT", "^start", "{col}", "- AND*", "C++",
                                    'a"b', '"', "*", ":", "NEAR", "value:Atlas", "Atlas*", "-Atlas", "(", "\x00Atlas",
                                    "", " ", "Atlas " * 300])
def test_the_graph_read_backwards_takes_a_questions_words_literally(naming_kb, phrase):
    """Quotes, stars, NEAR, minus, colons, brackets: words or separators to the full-text index,
    never its syntax; a phrase of no word at all names nothing."""
    expected = scanned(naming_kb, phrase, like=False) if re.search(r"\w", phrase) else []
    assert naming_kb.facts_naming([phrase]) == expected
    if phrase in ('"Best" of', "NEAR", "AND*", "{col}"):
        assert [naming_kb.title(s) for s, *_ in expected] == ["Lists"]


def test_a_question_with_the_indexs_syntax_is_read_backwards_without_error(reader):
    for question in ['Whose capital is "Andorra la Vella" NEAR: -*?', 'Who has 東海" OR mouth:*', "AND ^ ( {"]:
        reader.find(question)  # never an FTS5 syntax error
    assert any(i.kind == "reverse" and i.title == "Andorra" for i in reader.reverse('Whose capital is "Andorra la Vella"?', []))


def test_reading_backwards_costs_the_same_on_a_graph_100_times_larger(tmp_path):
    """The work per phrase (SQLite's virtual machine steps, counted by its progress handler) is
    that of the facts it finds, not of the number of facts (~30 M in English); `limit` bounds it
    for a phrase many facts hold, the first ones kept."""
    def graph(copies: int) -> Knowledge:
        (tmp_path / f"x{copies}").mkdir()
        writer = KnowledgeWriter(tmp_path / f"x{copies}" / "knowledge.sqlite")
        writer.article("Ayn Rand", {"facts": [("notable works", "Atlas Shrugged, The Fountainhead")]})
        for i in range(copies * 100):
            writer.article(f"Filler {i}", {"facts": [("capital", f"Town {i}"), ("motto", "Work and freedom")]})
        writer.close()
        return Knowledge.open(tmp_path / f"x{copies}")

    def steps(kb: Knowledge, phrases: list[str], limit: int = 200) -> tuple[int, list]:
        counted = [0]
        kb.db.set_progress_handler(lambda: counted.__setitem__(0, counted[0] + 1), 10)
        found = kb.facts_naming(phrases, limit)
        kb.db.set_progress_handler(None, 10)
        return counted[0], found

    small, large = graph(1), graph(100)
    (few, found), (many, found_large) = (steps(kb, ["Atlas Shrugged", "The Fountainhead", "Shrugged"]) for kb in (small, large))
    assert found == found_large and [a for _, a, _, _ in found] == ["notable works"]
    assert many <= few + 20, (few, many)
    (few, towns), (many, towns_large) = (steps(kb, ["Town"], limit=3) for kb in (small, large))
    assert towns == towns_large and [v for _, _, v, _ in towns] == ["Town 0", "Town 1", "Town 2"]
    assert many <= few + 20, (few, many)


def test_a_graph_of_the_format_before_is_a_clear_error_that_says_how_to_rebuild(naming_kb, reader, tmp_path):
    old = tmp_path / "old" / "knowledge.sqlite"
    old.parent.mkdir()
    shutil.copy(naming_kb.path, old)
    with sqlite3.connect(old) as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'version'")
    before = old.read_bytes()
    for opening in (Knowledge.open, lambda folder: Reader.open(folder, index=reader.index)):
        with pytest.raises(DatasetError, match=r"knowledge graph format 1, this code reads \d+\. Rebuild .*"
                                               r"prepare_wiki\.py SOURCE --out .* --overwrite"):
            opening(old.parent)
    assert old.read_bytes() == before


# ----- evidence

@pytest.mark.parametrize("question, kind, text", [
    ("What is the capital of Andorra?", "fact", "Andorra la Vella"),
    ("Which city is the capital city of Andorra?", "fact", "Andorra la Vella"),  # a capital is a city
    ("Andorra的首都是什么？", "fact", "Andorra la Vella"),
    ("Who is the prime minister of Andorra?", "fact", "Antoni Martí"),
    ("Tell me about the economy of Andorra.", "section", "Tourism is the mainstay of the tiny economy of Andorra."),
    ("Tell me about the history of Andorra.", "section", "Charlemagne granted a charter to the people of Andorra in 805."),
    ("What is Andorra?", "lead", "Andorra is a landlocked microstate in southwestern Europe."),
    ("What is Andorra known for?", "lead", "Andorra is a landlocked microstate in southwestern Europe."),
    ("define andorra", "lead", "Andorra is a landlocked microstate in southwestern Europe."),
    ("How many people live in Andorra?", "fact", "85,470"),
])
def test_the_best_evidence_is_what_the_question_asks(reader, question, kind, text):
    found = reader.find(question)
    assert found.answerable and found.best.kind == kind and found.best.text == text, found.items[:3]


@pytest.mark.parametrize("question", ["阿富汗的首都是哪里？", "What is the capital of Ruritania?", "Who was Zembla?"])
def test_what_the_corpus_does_not_hold_is_not_found(reader, question):
    found = reader.find(question)
    assert not found.answerable, found.items[:2]
    reply = not_found(found)
    assert is_abstention(reply) and found.best.text in reply  # says so, and shows what was closest
    assert reply.startswith(ABSTAIN["zh" if "阿富汗" in question else "en"])


def test_the_threshold_is_chosen_on_train_questions_and_stored_with_the_index(kb_data, reader):
    info = json.loads((kb_data / "index" / "wikigpt_index.json").read_text())
    assert 0.5 < info["abstain_below"] < 1.0 and reader.threshold == info["abstain_below"]
    assert info["calibration"]["answered"] >= 0.9 and info["calibration"]["abstained"] >= 0.9


def test_the_threshold_asks_about_a_bounded_sample_of_train_articles(kb_data, reader):
    """On a full dump the train split holds millions of articles: calibrate() asks about at most
    max_questions of them, drawn in one pass; a split that small is taken whole, in order, so
    its questions (and the threshold) are those of every article."""
    from wikigpt.knowledge.qa_items import sample_articles

    train = [a["title"] for a in read_articles(kb_data, "train")]
    assert [a["title"] for a in sample_articles(kb_data, "train", len(train))] == train
    some = [a["title"] for a in sample_articles(kb_data, "train", 3, seed=1)]
    assert len(some) == 3 and set(some) <= set(train) and some == [t for t in train if t in some]
    assert calibrate(kb_data, reader, max_questions=3)["calibration"]["questions"] <= 3


def test_the_prompt_shows_the_best_evidence_first_and_names_the_attribute(kb_data, reader):
    tok = load_dataset(kb_data).tokenizer
    ids, found, sources = evidence_prompt(reader, tok, [Message("user", "What is the capital of Andorra?")], 200, 255)
    prompt = tok.decode(ids)
    assert "Sources:\n[1] Andorra (capital): Andorra la Vella\n" in prompt and sources[0].title == "Andorra (capital)"
    assert prompt.endswith("Question: What is the capital of Andorra?<|end|><|assistant|>")


def test_a_reply_that_copies_evidence_no_source_fitted_still_lists_it(kb_data, reader):
    """A question that fills the context leaves no room for a source: the reply still copies the
    best evidence (or shows it as closest), and listed nothing (a Chinese user's walkthrough)."""
    from wikigpt.knowledge.grounding import cited
    tok = load_dataset(kb_data).tokenizer
    question = [Message("user", "What is the capital of Andorra? " + "Please answer briefly. " * 6)]
    room = len(render_chat(tok, question, add_generation_prompt=True)[0])  # the question, and no room left
    _, found, sources = evidence_prompt(reader, tok, question, room, 255)
    assert sources == [] and found.best.text == "Andorra la Vella"
    assert [s.title for s in cited(found, sources, copying=True)] == ["Andorra (capital)"]
    assert cited(found, sources, copying=False) == []  # the model alone: it saw no source
    _, found, sources = evidence_prompt(reader, tok, question, 200, 255)
    assert cited(found, sources, copying=True) == sources != []  # those the prompt showed


def test_a_list_passage_gives_one_piece_of_evidence_per_item(reader):
    items = reader.candidates([], [Passage("Andorra", "Parishes\nCanillo\nEncamp is a parish. It is old.")])
    assert [(i.text, i.attribute) for i in items] == [("Canillo", "Parishes"), ("Encamp is a parish.", "Parishes"),
                                                      ("It is old.", "Parishes")]


def test_evidence_copy_starts_at_the_evidence_and_stops_at_its_end():
    copy = EvidenceCopy([5, 6, 7, 5, 8], end_of_turn=0)
    assert copy.prior([]) == {5: 1.0}
    assert copy.prior([5]) == {6: 1.0} and copy.prior([5, 6, 7, 5]) == {8: 1.0}  # the longest match decides
    assert copy.prior([5, 6, 7, 5, 8]) == {0: 1.0}  # the evidence's end ends the turn (no sentence end needed)
    assert copy.prior([9]) is None and EvidenceCopy([], 0).prior([]) is None


def test_copy_plan_copies_the_best_evidence_says_not_found_or_leaves_the_model_alone(kb_data, reader):
    tok = load_dataset(kb_data).tokenizer
    chat = SamplingParams(temperature=0.7, repetition_penalty=1.15, copy=0.5)
    found = reader.find("What is the capital of Andorra?")
    params, said, copy = copy_plan(tok, found, chat)
    assert said is None and copy.ids == tok.encode("Andorra la Vella")
    assert params == replace(chat, temperature=0.0, repetition_penalty=1.0)  # read back greedily, as benchmarked
    missing = reader.find("What is the capital of Ruritania?")
    params, said, copy = copy_plan(tok, missing, chat)
    assert said == not_found(missing) and copy is None and params == chat
    assert copy_plan(tok, found, replace(chat, copy=0.0)) == (replace(chat, copy=0.0), None, None)  # the model alone
    assert copy_plan(tok, missing, replace(chat, copy=0.0))[1] is None  # ...which may say anything


def test_sft_rows_teach_facts_sections_and_not_found_rendered_as_at_chat_time(kb_data):
    tok = load_dataset(kb_data).tokenizer
    index = Index.open(kb_data)
    convs = list(wikiqa.grounded_conversations(kb_data, index, tok, 256, seed=0))
    answers = [a.content for _, a in convs]
    train = {r["title"] for r in read_articles(kb_data, "train")}
    for user, answer in convs:
        label, text = user.content.split("\n")[1][len("[1] "):].split(": ", 1)  # [1]: what to read
        if answer.content == ABSTAIN["en"]:
            continue
        assert label.rsplit(" (", 1)[0] in train  # only train articles are taught
        if answer.content != text:  # a fact, said as a sentence that quotes [1]'s value
            title, attribute = label[:-1].rsplit(" (", 1)
            said = {"长江": f"长江的{ZH_WORDS.get(attribute)}是{text}。"}.get(title, f"The {attribute} of {title} is {text}.")
            assert answer.content == said, (label, answer)
    assert ABSTAIN["en"] in answers
    if "Andorra" in train:
        assert "The capital of Andorra is Andorra la Vella." in answers
    user, answer = convs[0]
    ids, _ = render_chat(tok, [user], add_generation_prompt=True)
    question = user.content.rsplit("Question: ", 1)[1]
    assert len(ids) <= 256 and question in user.content


# ----- bad input

def test_an_older_folder_without_the_graph_still_retrieves_and_says_how_to_rebuild(kb_data, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(kb_data, old)
    (old / "knowledge.sqlite").unlink()
    reader = Reader.open(old)
    assert reader.kb is None and "prepare_wiki.py" in reader.note and "--overwrite" in reader.note
    found = reader.find("Tell me about the economy of Andorra.")
    assert found.answerable and "economy" in found.best.text  # passages only, and never "not found"
    r = run_cli("retrieve.py", "--data", old, "What is the capital of Andorra?")
    assert r.returncode == 0 and "no knowledge graph" in r.stdout and "[1] Andorra" in r.stdout


def test_a_corrupt_graph_is_a_clear_error_and_nothing_is_overwritten(kb_data, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(kb_data, bad)
    (bad / "knowledge.sqlite").write_bytes(b"this is not a database" * 100)
    before = (bad / "knowledge.sqlite").read_bytes()
    with pytest.raises(DatasetError, match="not a readable knowledge graph"):
        Knowledge.open(bad)
    for args in (["What is Andorra?"], ["--build"]):
        r = run_cli("retrieve.py", "--data", bad, *args)
        assert r.returncode == 2 and "not a readable knowledge graph" in r.stderr and "Traceback" not in r.stderr
    assert (bad / "knowledge.sqlite").read_bytes() == before


def test_chat_refuses_an_empty_question_and_one_longer_than_the_context(tiny_ckpt):
    r = run_cli("chat.py", "--ckpt", tiny_ckpt, "--prompt", "   ")
    assert r.returncode == 2 and "--prompt is empty" in r.stderr
    r = run_cli("chat.py", "--ckpt", tiny_ckpt, "--prompt", "word " * 400, "--max_new_tokens", "8")
    assert r.returncode == 2 and "Shorten it" in r.stderr and "Traceback" not in r.stderr


def test_rag_without_data_names_the_checkpoints_dataset_when_it_is_not_here(tmp_path, monkeypatch):
    from wikigpt.knowledge.retrieval import open_index
    monkeypatch.chdir(tmp_path)  # a relative path the training run wrote, read from elsewhere
    with pytest.raises(UsageError, match=r"trained on data/demo, which is not a folder here: pass --data"):
        open_index("", 8, "data/demo")
    with pytest.raises(UsageError, match="pass --data DATA_FOLDER"):
        open_index("", 8, "")
    with pytest.raises(DatasetError, match="nope: no such folder"):  # a --data given is read as given
        open_index("nope", 8, "data/demo")


def test_chat_says_a_base_model_is_one_and_refuses_rag_options_without_rag(tiny_ckpt):
    r = run_cli("chat.py", "--ckpt", tiny_ckpt, "--prompt", "Hi", "--max_new_tokens", "4")
    assert r.returncode == 0 and "is a base (pretrained) model, never taught the chat turns" in r.stderr
    for option in (["--copy", "0.9"], ["--data", "data/nope"], ["--rag_k=3"]):
        r = run_cli("chat.py", "--ckpt", tiny_ckpt, "--prompt", "Hi", *option)
        assert r.returncode == 2 and "add --rag" in r.stderr and "Traceback" not in r.stderr
