"""
The knowledge graph of a dataset folder, DATA/knowledge.sqlite: Wikipedia's entities (the kept
articles), their attributes (infobox facts), their names (titles and redirects) and relations
(outgoing links). prepare_wiki.py writes it in its cleaning pass (wikigpt/prep/facts.py reads
the wikitext); retrieval reads it through `Knowledge`, read-only.

    kb = Knowledge.open("data/demo")
    kb.link("What is the capital of Andorra?")   # [Link(title='Andorra', subject=32, ...)]
    kb.facts(32)                                  # [("capital", "Andorra la Vella"), ...]
    kb.sections(32)                               # [("Economy", "Tourism, the mainstay of ..."), ...]

SQLite, from the standard library: one file, no server, indexed lookups that stay fast at the
full dump's size. Tables:
    meta(key, value)                          format version and counts
    articles(no, title)                       the kept articles, numbered in the order of
                                              articles.jsonl.gz (the retrieval index's order)
    facts(id, subject, ord, attribute, value) infobox fields as plain text; indexed by subject
    facts_fts(words)                          a full-text index (FTS5, contentless: the values are not
                                              stored twice) of each fact's value, keyed by facts.id:
                                              what facts_naming (the graph read backwards) asks
    sections(subject, ord, heading, opening)  each section's first sentence; indexed by subject
    links(subject, targets)                   outgoing wikilinks, one row per article, the targets
                                              newline-separated: enwiki has ~150 M links, and one
                                              row per article keeps the table at its 6.7 M rows
    aliases(alias, subject)                   redirects to a kept article
    names(key, subject, kind)                 what entity linking looks up: titles (kind 0),
                                              redirects (1), other names (2: "Animalia" for
                                              "Animalia (book)", an infobox's long or native name,
                                              a person's surname when only one has it, the
                                              names the lead writes in bold: "bitumen"),
                                              abbreviations a lead gives (5: "ANSI", linked only
                                              where a question writes them in capitals),
                                              case-folded and accent-free; indexed by key
It is written to a temporary file in the order of the articles, then renamed into place: the
same articles give the same bytes, and an interrupted run never leaves half a database.
"""
import json
import re
import sqlite3
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from wikigpt.prep.data import DatasetError
from wikigpt.run.durable import replace_durably
from wikigpt.knowledge.analysis import in_simplified
from wikigpt.knowledge.sentences import CJK

KNOWLEDGE = "knowledge.sqlite"
KNOWLEDGE_VERSION = 3  # 2: facts_fts; 3: names from the lead's bold (older: rebuilt, Knowledge.open says how)
MAX_NAME_UNITS = 12  # the longest name linked: words, or CJK characters
MAX_NUMBER_UNITS = 4  # a name also looked up in the other number, up to this long (a 256-word question: ~4.4 k keys)
UNIT = re.compile(rf"[{CJK}]|[^\W_{CJK}]+")  # a word, or one CJK character
NAME_FACTS = ("conventional long name", "native name", "common name", "birth name", "pseudonym", "other names")
# the kinds of names (names.kind, Link.kind): what linking prefers, lowest first
TITLE, REDIRECT, OTHER_NAME, PLURAL, GUESSED, ABBREVIATION = range(6)  # GUESSED: linking.py, not stored
PERSON_FACTS = {"birth date", "birth place", "death date", "death place"}  # an infobox of a person
# one-character CJK words a question is made of ("what", "is", ...): never a name on their own
ZH_FUNCTION_CHARS = set("的是了在和有与及或我你他她它这那哪谁吗呢么什怎为请把被从对就也都很")

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE articles(no INTEGER PRIMARY KEY, title TEXT NOT NULL);
CREATE TABLE facts(id INTEGER PRIMARY KEY, subject INTEGER NOT NULL, ord INTEGER NOT NULL, attribute TEXT NOT NULL,
                   value TEXT NOT NULL);
CREATE TABLE sections(subject INTEGER NOT NULL, ord INTEGER NOT NULL, heading TEXT NOT NULL, opening TEXT NOT NULL);
CREATE TABLE links(subject INTEGER PRIMARY KEY, targets TEXT NOT NULL);
CREATE TABLE aliases(alias TEXT NOT NULL, subject INTEGER NOT NULL);
CREATE TABLE names(key TEXT PRIMARY KEY, subject INTEGER NOT NULL, kind INTEGER NOT NULL) WITHOUT ROWID;
CREATE TEMP TABLE redirects(alias TEXT NOT NULL, target TEXT NOT NULL);
CREATE TEMP TABLE persons(subject INTEGER PRIMARY KEY);
CREATE TEMP TABLE lead_names(name TEXT NOT NULL, subject INTEGER NOT NULL);
"""
INDEXES = """
CREATE UNIQUE INDEX articles_title ON articles(title);
CREATE INDEX facts_subject ON facts(subject);
CREATE INDEX sections_subject ON sections(subject);
CREATE INDEX aliases_subject ON aliases(subject);  -- Knowledge.aliases(subject); a look-up by alias reads names
"""
# The facts' values as words, for facts_naming: a value holds a phrase as whole words, case aside, when
# its words (`\w+` runs, as the check after the query reads them) hold the phrase's in a row. FTS5's
# own tokenizer (unicode61, Unicode 6.1) is given those words already case-folded, one space between:
# on the raw value it would join a word to a character the check counts as a boundary (a combining
# accent, a symbol newer than its tables: 'cafe\u0301' is 'cafe' to the check) and fold fewer cases
# than re.IGNORECASE ('İstanbul' is 'Istanbul' to it). Diacritics are kept (the check keeps them:
# 'Emile' is no 'Émile'), '_' is a word character as to \w. Then every fact the check accepts is a
# candidate (tests/test_knowledge.py compares it with a scan of every fact), in the facts' order.
# Chinese needs no second index: a run of CJK characters is one word to \w, so the check accepted a
# run only where it is whole ('阿富汗' in '阿富汗、伊朗', not '长江' in '长江流域'), and whole runs
# are what this index holds; a trigram index would only add candidates the check throws away.
FACT_WORDS_INDEX = """
CREATE VIRTUAL TABLE facts_fts USING fts5(words, content='', columnsize=0,
                                          tokenize="unicode61 remove_diacritics 0 tokenchars '_'");
"""
# a phrase whose every word is in more facts than this is not looked up: FTS5 checks the word
# order of each fact holding all its words before LIMIT counts it (~80 ns a fact: "States United"
# read every fact naming the United States; 40 such phrases in a question, seconds at enwiki's
# ~30 M facts); this many costs ~4 ms. A name of common words only is rare in a question.
MAX_PHRASE_FACTS = 50_000
WORDS = re.compile(r"\w+")
DOTTED_I = str.maketrans({"\u0130": "i", "\u0131": "i"})  # İ, ı: 'i' to re.IGNORECASE, not to casefold()


def fact_words(text: str) -> str:
    """'İstanbul, Turkey' -> 'istanbul turkey': what facts_fts indexes of a value, and looks up of a phrase."""
    return " ".join(WORDS.findall(text)).translate(DOTTED_I).casefold()


def fts_phrase(words: str) -> str:
    """An FTS5 string: its words one phrase, nothing in it syntax ('NEAR', '*', '-', ':' are words
    or separators inside quotes); a quote doubled (fact_words leaves none: no word character is one)."""
    return '"' + words.replace('"', '""') + '"'


def name_units(text: str) -> list[tuple[str, int, int]]:
    """Text -> its (unit, start, end): words and CJK characters, case-folded, accents gone."""
    out = []
    for m in UNIT.finditer(text):
        unit = m[0].casefold()
        if not unit.isascii():
            unit = unicodedata.normalize("NFC", "".join(c for c in unicodedata.normalize("NFD", unit)
                                                         if unicodedata.category(c) != "Mn"))
        out.append((unit, m.start(), m.end()))
    return out


def name_key(text: str) -> str:
    """'André Agassi' -> 'andre agassi'; '阿富汗' -> '阿 富 汗': what names are matched by."""
    return " ".join(u for u, _, _ in name_units(text))


def _singular(word: str) -> str:
    """An English plural's singular ('aardvarks' -> 'aardvark', 'ponies' -> 'pony', 'boxes' ->
    'box'), '' for a word that is not one; a wrong guess only looks up a name that is not there."""
    if len(word) < 4 or not word.isascii() or not word.endswith("s") or word == "series" or word.endswith(
            ("ss", "us", "is", "ics", "ews", "cies")):  # physics, news, species: not plurals ("news" is no "new")
        return ""
    if word.endswith("ies"):
        return word[:-3] + "y"
    return word[:-2] if word.endswith(("ches", "shes", "xes", "sses")) else word[:-1]


def _plurals(word: str) -> list[str]:
    """The English plurals a singular may have ('fish' -> 'fishs', 'fishes'; 'city' -> 'cities'):
    the names looked up for it, when one is a plural ("the ray-finned fishes"); a wrong guess only
    looks up a name that is not there."""
    if len(word) < 3 or not word.isascii() or not word.isalpha() or word.endswith("s"):
        return []
    return [word[:-1] + "ies"] if word.endswith("y") and word[-2] not in "aeiou" else [word + "s", word + "es"]


def surname(title: str) -> str:
    """'Arthur Schopenhauer' -> 'schopenhauer': the last of a name of two to four capitalised
    words ('' for other titles: one word, or 'List of ...')."""
    words = without_qualifier(title).split()
    if not 2 <= len(words) <= 4 or not all(w[:1].isupper() or w[:1] == "(" for w in words):
        return ""
    return name_key(words[-1]) if len(words[-1]) > 2 else ""  # "Jr.", "II" name no one


def without_qualifier(title: str) -> str:
    return re.sub(r"\s*\([^()]*\)$", "", title)  # "Animalia (book)" -> "Animalia"


# zhwiki names a city or a province with its rank, and people leave it out: 上海市 is 上海
_ZH_RANK = re.compile(rf"(?<=[{CJK}]{{2}})(?:特别行政区|特別行政區|自治区|自治區|市|省|县|縣)$")


def without_rank(title: str) -> str:
    """'上海市' -> '上海', '黑龙江省' -> '黑龙江'; other titles as they are (城市 keeps its 市)."""
    return _ZH_RANK.sub("", title)


class KnowledgeWriter:
    """Builds knowledge.sqlite: add articles (in the order of articles.jsonl.gz) and redirects,
    then close() -> counts. Writes PATH.tmp and renames it only when it is whole."""

    def __init__(self, path):
        self.path, self.tmp = Path(path), Path(f"{path}.tmp")
        self.tmp.unlink(missing_ok=True)
        self.db = sqlite3.connect(self.tmp)
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
        self.counts = {"articles": 0, "infoboxes": 0, "facts": 0, "sections": 0, "links": 0,
                       "redirects": 0, "aliases": 0, "names": 0}

    def article(self, title: str, record: dict):
        """One kept article: record holds its facts, sections and links (facts.article_knowledge;
        the links as one newline-separated string)."""
        no, c = self.counts["articles"], self.counts
        self.db.execute("INSERT INTO articles VALUES (?, ?)", (no, title))
        facts, sections, links = record.get("facts", []), record.get("sections", []), record.get("links", "")
        short = record.get("abbreviation")  # the lead's "(ANSI)": a fact, and a name (ABBREVIATION)
        counted = len(facts)  # the infobox's: what the summary counts
        if short and all(a != "abbreviation" for a, _ in facts):
            facts = facts + [("abbreviation", short)]
        self.db.executemany("INSERT INTO facts(subject, ord, attribute, value) VALUES (?, ?, ?, ?)",
                            [(no, i, a, v) for i, (a, v) in enumerate(facts)])
        self.db.executemany("INSERT INTO sections VALUES (?, ?, ?, ?)",
                            [(no, i, h, o) for i, (h, o) in enumerate(sections)])
        if links:  # newline-separated titles
            self.db.execute("INSERT INTO links VALUES (?, ?)", (no, links))
        self.db.executemany("INSERT INTO lead_names VALUES (?, ?)", [(n, no) for n in record.get("names", [])])
        if record.get("person") or any(a in PERSON_FACTS for a, _ in facts):
            self.db.execute("INSERT INTO persons VALUES (?)", (no,))
        c.update(articles=no + 1, infoboxes=c["infoboxes"] + bool(counted), facts=c["facts"] + counted,
                 sections=c["sections"] + len(sections), links=c["links"] + (links.count("\n") + 1 if links else 0))

    def redirect(self, alias: str, target: str):
        if alias and target:
            self.db.execute("INSERT INTO redirects VALUES (?, ?)", (alias, target))
            self.counts["redirects"] += 1

    def close(self) -> dict:
        db, c = self.db, self.counts
        db.executescript(INDEXES)
        # a redirect is an alias when its target was kept (not a dropped page, not outside the dump)
        db.execute("INSERT INTO aliases SELECT r.alias, a.no FROM redirects r JOIN articles a "
                   "ON a.title = r.target ORDER BY r.rowid")
        c["aliases"] = db.execute("SELECT count(*) FROM aliases").fetchone()[0]
        _write_names(db)
        c["names"] = db.execute("SELECT count(*) FROM names").fetchone()[0]
        _write_fact_words(db)
        db.executemany("INSERT INTO meta VALUES (?, ?)", [("version", str(KNOWLEDGE_VERSION)),
                                                          ("counts", json.dumps(c, sort_keys=True))])
        db.commit()
        db.close()
        replace_durably(self.tmp, self.path)  # written with synchronous=OFF: on disk before its name
        return dict(c)


def _write_names(db: sqlite3.Connection):
    """The names table, inside SQLite: at enwiki's ~6.7 M titles, ~10 M redirects and their
    other names, one Python list of them all would hold gigabytes. Python computes each key
    (name_key, registered as SQL functions) while SQLite streams the rows; INSERT OR IGNORE
    in this order keeps the first name of a key: titles, then redirects, then other names
    (SQLite inserts an INSERT ... SELECT's rows in the SELECT's order)."""
    db.create_function("name_key", 1, name_key, deterministic=True)
    db.create_function("without_qualifier", 1, without_qualifier, deterministic=True)
    db.create_function("without_rank", 1, without_rank, deterministic=True)
    db.create_function("in_simplified", 1, in_simplified, deterministic=True)
    names = ("SELECT name_key(title), no, 0 FROM articles ORDER BY no",
             "SELECT name_key(alias), subject, 1 FROM aliases ORDER BY rowid",
             "SELECT name_key(without_qualifier(title)), no, 2 FROM articles ORDER BY no",
             "SELECT name_key(without_rank(title)), no, 2 FROM articles ORDER BY no",
             f"SELECT name_key(value), subject, 2 FROM facts WHERE attribute IN ({','.join('?' * len(NAME_FACTS))}) "
             "AND length(value) <= 80 ORDER BY subject, ord",
             "SELECT name_key(name), subject, 2 FROM lead_names ORDER BY rowid",  # "Asphalt, also known as bitumen"
             # a Chinese title in the other script (臺北101 as 台北101): questions are looked up in both
             "SELECT name_key(in_simplified(title)), no, 2 FROM articles ORDER BY no",
             "SELECT name_key(in_simplified(alias)), subject, 2 FROM aliases ORDER BY rowid",
             "SELECT name_key(in_simplified(without_rank(title))), no, 2 FROM articles ORDER BY no")
    for select in names:
        db.execute(f"INSERT OR IGNORE INTO names {select}", NAME_FACTS if "facts" in select else ())
    # a person by surname ("Schopenhauer", "Lincoln" in a reply), when no other name has that key
    # and no other person that surname: two Johnsons name neither
    db.create_function("surname", 1, surname, deterministic=True)
    db.execute("INSERT OR IGNORE INTO names SELECT key, min(subject), 2 FROM (SELECT surname(a.title) AS key, "
               "a.no AS subject FROM persons p JOIN articles a ON a.no = p.subject) WHERE key != '' "
               "GROUP BY key HAVING count(*) = 1 ORDER BY min(subject)")
    # an abbreviation ("WHO", "AM"): linked only where the question writes it in capitals (Knowledge.link)
    db.execute(f"INSERT OR IGNORE INTO names SELECT name_key(value), subject, {ABBREVIATION} FROM facts "
               "WHERE attribute = 'abbreviation' AND length(value) <= 12 ORDER BY subject, ord")
    db.execute("DELETE FROM names WHERE key = ''")  # a name of punctuation alone names nothing


def _write_fact_words(db: sqlite3.Connection):
    """facts_fts, from the facts table (Python folds each value as it streams by), then merged
    into one b-tree ('optimize'): one segment to read per phrase, the same bytes for the same facts."""
    db.create_function("fact_words", 1, fact_words, deterministic=True)
    db.executescript(FACT_WORDS_INDEX)
    db.execute("INSERT INTO facts_fts(rowid, words) SELECT id, fact_words(value) FROM facts ORDER BY id")
    db.execute("INSERT INTO facts_fts(facts_fts) VALUES ('optimize')")


def write_knowledge(path, parts: list) -> dict:
    """prepare_wiki.py's knowledge parts (JSON lines: an article's record, or a redirect), in
    order -> knowledge.sqlite at path; its counts."""
    writer = KnowledgeWriter(path)
    for part in parts:
        with open(part, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if "redirect" in row:
                    writer.redirect(row["redirect"], row["target"])
                else:
                    writer.article(row["title"], row)
    return writer.close()


# ----------------------------------------------------------------------------------------
# Reading

@dataclass
class Link:
    """A name found in a question: the article it names, and where (characters of the question)."""
    title: str
    subject: int  # the article's number
    start: int
    end: int
    units: int  # how many words (or CJK characters) the name spans
    kind: int  # TITLE, REDIRECT, OTHER_NAME, PLURAL (of a name), GUESSED (linking.py), ABBREVIATION


def rebuild_hint(folder) -> str:
    return (f"Rebuild the folder with this version: python prepare_wiki.py SOURCE --out {folder} "
            f"--overwrite (the same source and options), then python retrieve.py --data {folder} --build.")


class Knowledge:
    """A read-only knowledge.sqlite. Every lookup is one indexed query."""

    def __init__(self, db: sqlite3.Connection, path: Path, counts: dict):
        self.db, self.path, self.counts = db, path, counts

    @classmethod
    def open(cls, folder) -> "Knowledge":
        folder = Path(folder)
        path = folder / KNOWLEDGE
        if not path.is_file():
            raise DatasetError(f"{folder} has no knowledge graph ({KNOWLEDGE}): it was made by an older "
                               f"prepare_wiki.py. Retrieval works without it, but facts, names and "
                               f"'not found' need it. {rebuild_hint(folder)}")
        try:
            # a URI from the raw path would read '#' or '?' in a folder's name as the URI's own
            # (dropping mode=ro, creating a stray empty file): as_uri() percent-encodes them
            uri = path.resolve().as_uri() + "?mode=ro&immutable=1"
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            meta = dict(db.execute("SELECT key, value FROM meta"))
            counts = json.loads(meta["counts"])
        except (sqlite3.DatabaseError, KeyError, ValueError) as e:
            raise DatasetError(f"{path}: not a readable knowledge graph ({e}). {rebuild_hint(folder)}")
        if meta.get("version") != str(KNOWLEDGE_VERSION):
            raise DatasetError(f"{path}: knowledge graph format {meta.get('version')}, this code reads "
                               f"{KNOWLEDGE_VERSION}. {rebuild_hint(folder)}")
        return cls(db, path, counts)

    def _rows(self, sql: str, args=()) -> list:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:  # damaged after it opened: a clear error, not a traceback
            raise DatasetError(f"{self.path}: the knowledge graph is damaged ({e}). "
                               f"{rebuild_hint(self.path.parent)}")

    def title(self, subject: int) -> str:
        rows = self._rows("SELECT title FROM articles WHERE no = ?", (subject,))
        return rows[0][0] if rows else ""

    def subject(self, title: str) -> int | None:
        rows = self._rows("SELECT no FROM articles WHERE title = ?", (title,))
        return rows[0][0] if rows else None

    def facts(self, subject: int) -> list[tuple[str, str]]:
        return self._rows("SELECT attribute, value FROM facts WHERE subject = ? ORDER BY ord", (subject,))

    def sections(self, subject: int) -> list[tuple[str, str]]:
        return self._rows("SELECT heading, opening FROM sections WHERE subject = ? ORDER BY ord", (subject,))

    def links(self, subject: int) -> list[str]:
        """The titles an article links to, in order, each once (first letters folded up, as
        MediaWiki reads them)."""
        rows = self._rows("SELECT targets FROM links WHERE subject = ?", (subject,))
        return list(dict.fromkeys(t[:1].upper() + t[1:] for t in rows[0][0].split("\n"))) if rows else []

    def aliases(self, subject: int) -> list[str]:
        return [a for a, in self._rows("SELECT alias FROM aliases WHERE subject = ? ORDER BY rowid", (subject,))]

    def facts_naming(self, phrases: list[str], limit: int = 200) -> list[tuple[int, str, str, str]]:
        """Facts whose value holds one of the phrases as whole words, case aside (but for a phrase
        in capitals): (subject, attribute, value, phrase), longest phrase first, each fact once. The
        graph read backwards ("Atlas Shrugged" -> Ayn Rand's notable works). Per phrase, the first
        `limit` facts whose words hold its words (facts_fts), then the exact check: the cost is
        that of the facts found, not of the ~30 M facts of the English dump (a LIKE scan of them
        per phrase: ~11 s p50, ~32 s p95 a question, docs/measured.md). A phrase of no word
        (punctuation alone) names nothing."""
        out, seen, counts = [], set(), {}
        for phrase in sorted(dict.fromkeys(phrases), key=len, reverse=True)[:40]:  # ties: in the order given
            words = fact_words(phrase)
            if not words or not self.few_hold_one(words.split(), counts):
                continue
            rows = self._rows("SELECT subject, attribute, value FROM facts WHERE id IN (SELECT rowid FROM facts_fts "
                              "WHERE facts_fts MATCH ? ORDER BY rowid LIMIT ?) ORDER BY id", (fts_phrase(words), limit))
            if rows:  # (compiled only then: most phrases find nothing, and a question tries up to 40)
                pattern = re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)", 0 if phrase.isupper() else re.I)  # not Unita
            for subject, attribute, value in rows:
                if (subject, attribute) not in seen and pattern.search(value):
                    seen.add((subject, attribute))
                    out.append((subject, attribute, value, phrase))
        return out

    def few_hold_one(self, words: list[str], counts: dict) -> bool:
        """Whether one of a phrase's words is in at most MAX_PHRASE_FACTS facts (a phrase of one
        word always: its look-up stops at its LIMIT). Counts are capped (a word's whole count
        walks all its facts, ~20 ns each) and kept in `counts` for the question's other phrases."""
        if len(words) == 1:
            return True
        for word in words:
            if word not in counts:
                counts[word] = self.facts_with_word(word, MAX_PHRASE_FACTS + 1)
            if counts[word] <= MAX_PHRASE_FACTS:
                return True
        return False

    def facts_with_word(self, word: str, cap: int) -> int:
        """How many facts hold a word, counted up to `cap`."""
        return self._rows("SELECT count(*) FROM (SELECT rowid FROM facts_fts WHERE facts_fts MATCH ? LIMIT ?)",
                          (fts_phrase(word), cap))[0][0]

    def knows(self, name: str) -> bool:
        """Whether a name (title, redirect or other name) is in the graph."""
        return bool(self._rows("SELECT 1 FROM names WHERE key = ?", (name_key(name),)))

    def link(self, question: str, stopwords: frozenset = frozenset()) -> list[Link]:
        """The names in a question, longest first, never overlapping: every span of up to
        MAX_NAME_UNITS words (or CJK characters) is looked up in one query; a span made only of
        stopwords or one-character function words ("a", "的") names nothing."""
        units = name_units(question)[:256]  # a longer question: its start holds the names
        spans = {}
        for n in range(1, MAX_NAME_UNITS + 1):
            for i in range(len(units) - n + 1):
                words = [u for u, _, _ in units[i:i + n]]
                if all(w in stopwords or w in ZH_FUNCTION_CHARS or (len(w) == 1 and w.isascii()) for w in words):
                    continue
                key = " ".join(words)
                spans.setdefault(key, []).append((i, n, 0))
                if (folded := in_simplified(key)) != key:  # 臺北101 names 台北101 too (the graph holds both)
                    spans.setdefault(folded, []).append((i, n, 0))
                if n > MAX_NUMBER_UNITS:
                    continue  # names that long are titles of works, written as they are
                singular = _singular(words[-1])
                if singular:  # "aardvarks" names Aardvark (kind 3), after any exact name ("Algorithms")
                    spans.setdefault(" ".join(words[:-1] + [singular]), []).append((i, n, PLURAL))
                for plural in _plurals(words[-1]):  # "ray-finned fish" names "ray-finned fishes" (a lead's name)
                    spans.setdefault(" ".join(words[:-1] + [plural]), []).append((i, n, PLURAL))
        found = []
        keys = list(spans)
        for k in range(0, len(keys), 500):  # SQLite's limit on parameters per query
            chunk = keys[k:k + 500]
            found += self._rows(f"SELECT key, subject, kind FROM names WHERE key IN ({','.join('?' * len(chunk))})", chunk)
        candidates = sorted(((n, max(kind, least), i, subject) for key, subject, kind in found
                             for i, n, least in spans[key]
                             if kind != ABBREVIATION or question[units[i][1]:units[i + n - 1][2]].isupper()),
                            key=lambda c: (-c[0], c[1], c[2]))
        taken, links = set(), []
        for n, kind, i, subject in candidates:
            if taken.isdisjoint(range(i, i + n)):
                taken.update(range(i, i + n))
                links.append(Link(self.title(subject), subject, units[i][1], units[i + n - 1][2], n, kind))
        return links
