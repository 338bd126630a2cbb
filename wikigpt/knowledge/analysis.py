"""
Text analysis for retrieval: articles -> passages, text -> index terms. The index (retrieval.py,
index_build.py) and the evidence reader (evidence.py) share it, so a question's terms are the
index's terms. It knows nothing about how terms are stored or scored.

    split_passages(article_text)     # -> paragraph-sized passages of <= PASSAGE_CHARS
    terms("Aristotle was a Greek")   # -> ['aristotl', 'greek']
    terms("亚里士多德")               # -> 亚 里 士 多 德 亚里 里士 士多 多德

Latin-script words are lowercased, stripped of English stopwords and stemmed (Snowball);
Chinese/Japanese/Korean text, which has no spaces, becomes characters plus character bigrams
(traditional characters read as simplified ones), so zhwiki works like enwiki.
"""
import re
from functools import lru_cache

from wikigpt.knowledge.sentences import CJK

PASSAGE_CHARS = 500  # ~120 tokens of an 8k BPE: two or three fit a 256-token context with a question
# stemmed; the question words too: "what", "doe(s)" and "stand" in "What does ICRISAT stand for?"
# outscored the one passage that holds "ICRISAT" (each is common, but three common terms add up)
QUERY_FILLER = {"tell", "know", "explain", "describe", "pleas", "give", "talk", "inform", "what", "who", "whom",
                "whose", "which", "when", "where", "whi", "how", "doe", "do", "did", "can", "could", "would", "me",
                "you", "i", "wanna"}
# Lucene's English stop words (what bm25s used, kept when the index moved to tantivy: the same
# terms keep the ranking comparable)
STOPWORDS = frozenset("a an and are as at be but by for if in into is it no not of on or such that the their then "
                      "there these they this to was will with".split())
TERM = re.compile(rf"[{CJK}]+|[^\W_{CJK}]+")  # a run of CJK characters, or a word of anything else
CJK_RUN = re.compile(rf"[{CJK}]")
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def terms(text: str) -> list[str]:
    """The index terms of a text (see the module doc)."""
    if len(text) > REMEMBERED_CHARS:
        return analyse_terms(text)
    remembered = _remembered(text)
    return remembered.split(" ") if remembered else []


def analyse_terms(text: str, fold: bool = True) -> list[str]:
    """terms(), never remembered: for texts read once (an index build's passages). fold=False:
    Chinese as written (how indexes built before CJK_FOLDED read it)."""
    out, words = [], []
    for run in TERM.findall(text.lower()):
        if CJK_RUN.match(run):
            run = run.translate(simplified()) if fold else run
            out += list(run) + [a + b for a, b in zip(run, run[1:])]
        elif run not in STOPWORDS:
            words.append(run)
    return out + _stemmer().stemWords(words)  # order does not matter to BM25


# The evidence reader asks for the terms of the same sentences, titles and field names again and
# again (~360 calls a question): the last 2**14 texts of at most 200 characters (a sentence) are
# remembered, as one string each (Chinese makes a term of every character and pair: a tuple of
# them took 15x the memory): at most ~10 MB of English, ~45 MB of Chinese (docs/measured.md).
REMEMBERED_CHARS = 200


# zhwiki's articles are written in simplified or traditional characters (each as its authors chose;
# the site converts them as it shows them), and questions come in either: terms are read in one, so
# that 臺北 finds 台北. Character by character (OpenCC's table, the characters of U+4E00-U+9FFF: 3,563
# of them change), as the terms are characters and pairs of them.
CJK_FOLDED = "simplified"  # what an index's info says of its Chinese terms (indexes before: nothing)


@lru_cache(maxsize=1)
def simplified() -> dict[int, str]:
    """str.translate's table: traditional character -> simplified."""
    import opencc

    t2s = opencc.OpenCC("t2s")
    return {ord(c): s for c in map(chr, range(0x4E00, 0xA000)) if (s := t2s.convert(c)) != c and len(s) == 1}


def in_simplified(text: str) -> str:
    """Text with its traditional characters read as simplified ones (臺北101 -> 台北101); text
    without Chinese as it is (OpenCC is not loaded for it)."""
    return text.translate(simplified()) if CJK_RUN.search(text) else text


@lru_cache(maxsize=1 << 14)
def _remembered(text: str) -> str:
    return " ".join(analyse_terms(text))


def query_terms(query: str, fold: bool = True) -> list[str]:
    """A question's terms, without the words every question has ("tell me about ..."); fold:
    as analyse_terms."""
    return [t for t in (terms(query) if fold else analyse_terms(query, fold=False)) if t not in QUERY_FILLER]


def _pieces(text: str, max_chars: int) -> list[str]:
    """Paragraphs that fit, long ones cut at sentence ends, an overlong sentence cut at max_chars."""
    pieces = []
    for para in (p.strip() for p in text.split("\n")):
        if len(para) <= max_chars:
            pieces.append(para) if para else None
            continue
        sentence_run = ""
        for sentence in SENTENCE_END.split(para):
            if len(sentence) > max_chars and sentence_run:  # the sentences before it come first
                pieces.append(sentence_run)
                sentence_run = ""
            while len(sentence) > max_chars:  # cut between words where one ends in the second half
                cut = sentence.rfind(" ", max_chars // 2, max_chars + 1)
                cut = cut if cut > 0 else max_chars  # str slicing never splits a character
                pieces.append(sentence[:cut].rstrip())
                sentence = sentence[cut:].lstrip()
            if len(sentence_run) + len(sentence) + 1 > max_chars and sentence_run:
                pieces.append(sentence_run)
                sentence_run = ""
            sentence_run = f"{sentence_run} {sentence}".strip()
        if sentence_run:
            pieces.append(sentence_run)
    return pieces


def split_passages(text: str, max_chars: int = PASSAGE_CHARS) -> list[str]:
    """Article text -> passages of at most max_chars: whole paragraphs where they fit (short
    ones, such as headings, join the next), long paragraphs cut at sentence ends, and a
    sentence longer than max_chars cut at max_chars."""
    passages, current = [], ""
    for piece in _pieces(text, max_chars):  # join neighbours while they fit
        if current and len(current) + 1 + len(piece) > max_chars:
            passages.append(current)
            current = ""
        current = f"{current}\n{piece}" if current else piece
    if current:
        passages.append(current)
    return passages
