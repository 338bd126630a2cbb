"""
What the knowledge graph reads from one article's wikitext in the cleaning pass (no I/O; see
wikigpt/knowledge/graph.py for the database it goes into):

    facts(wikitext)  -> [("capital", "Andorra la Vella"), ("area", "467.63 km²"),
                         ("prime minister", "Antoni Martí"), ...]
    section_openings(text, headings)  -> [("Economy", "Tourism is the mainstay of ..."), ...]

Infobox fields become (attribute, value) facts with plain-text values: links become their
text, refs, comments and markup go, quantities and dates stay as text ({{convert|72|km|mi}} ->
"72 km", see templates.py), list items join with ", ". Images, maps, coordinates and
layout fields are not facts. Infoboxes are found by brace counting, not parsed with
mwparserfromhell: an infobox is a few % of a page, and the parser would cost more than the
rest of the knowledge pass together.
"""
import re

from wikigpt.prep.scan import closing_end, drop_comments, drop_spans, matched_spans
from wikigpt.prep.templates import INNERMOST, render_templates, split_args
from wikigpt.prep.wikitext import (_REF, _REF_CLOSE, _REF_OPEN, REMOVED, _hidden_link, drop_file_links, render_sups,
                                   converts, resolve_conversions)
from wikigpt.knowledge.sentences import language, opening_sentence

# after a "{": English names, and zhwiki's "XX信息框" / "XX資訊框" (a name of at most 40 characters
# read once per "{{": linear)
_BOX = (r"\{\s*(?:(?:infobox|automatic[ _]taxobox|taxobox|speciesbox|chembox|drugbox|geobox)\b"
        r"|[^{}|<>\n]{0,40}?(?:信息框|資訊框)\s*(?=[|}]))")
# "{{Infobox" opens an infobox, any other "{{" a template, "}}" closes ("{{{Infobox": "{" + one)
BOX_TOKENS = re.compile(r"\{%s|\{\{(?!%s)|\}\}" % (_BOX, _BOX), re.I)
BRACES = re.compile(r"\{\{|\}\}")
BOXES = re.compile(r"\{" + _BOX, re.I)
# A page has a few infoboxes; each nested one is read again inside the one around it, so a page
# of thousands nested would cost the square of its size: the first ones are read, while what
# they hold in all is at most MAX_INFOBOX_READS times the page (real pages: under 2)
MAX_INFOBOXES, MAX_INFOBOX_READS = 64, 4
# fields that are layout, not knowledge
SKIP_KEY = re.compile(r"^(?:image|img|logo|flag|coat|seal|symbol|map|pushpin|caption|alt|signature|footnote|"
                      r"module|embed|lat|long|(?:lat|long)(?:d|m|s|ns|ew)|coor|label|status system|display parents|trend|name|common name|"
                      r"blank|width|size|upright|border|bgcolour|color|colour|nocat|data|child|float|"
                      r"fossil range|iso code|website|url|footnotes)\b|(?:caption|alt|size|width|ref|refs|note|"
                      r"notes|image|map|type|year|rank|as of|footnote|imagesize|change|url|\d+px)$")
_PAIRED = re.compile(r"(?:title|name|event|date)\d*$")
_PAIR_KEY = re.compile(r"^(.*?) ?(title|event)(\d*)$")
_PAIR_OTHER = re.compile(r"(title|event)(\d*)$")
_DIGIT_END = re.compile(r"\d$")
_IMAGE_VALUE = re.compile(r"\.(?:svg|png|jpe?g|gif|tiff?|ogg|webm)$", re.I)
# "area_km2 = 467.63" -> ("area", "467.63 km²")
KEY_UNITS = {"km2": "km²", "sq mi": "sq mi", "sqmi": "sq mi", "km": "km", "mi": "mi", "m": "m",
             "ft": "ft", "kg": "kg", "lb": "lb", "ha": "ha"}
_KEY_UNIT = re.compile(r"^(.*?)[ ](km2|sq mi|sqmi|km|mi|m|ft|kg|lb|ha)$")
_NUMBERISH = re.compile(r"^[\d.,\s]+$")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_BR = re.compile(r"<br\s*/?>|</?(?:p|div|center)\b[^>]*>", re.I)
_TAG = re.compile(r"</?[a-zA-Z][^<>]{0,200}>")
_LINK = re.compile(r"\[\[([^\[\]|]*)(?:\|([^\[\]]*))?\]\]")
_EXTERNAL = re.compile(r"\[(?:https?:)?//[^\s\[\]]++\s*+([^\[\]]*+)\]")  # stops at the next bracket: linear
_QUOTES = re.compile(r"''+")
_SPACES = re.compile(r"[ \t\u00a0]+")
_SPACE_PUNCT = re.compile(r"\s+([,.;:)])")
_WORD = re.compile(r"\w")
MAX_VALUE_CHARS = 250  # longer fields are prose, not a fact
# a field's wikitext longer than this is not read at all: refs and templates can make a short
# value long (a population with three cited sources: ~2 kB), not 20 kB; and rendering a value
# costs the value's length, which nested infoboxes would otherwise multiply
MAX_RAW_VALUE_CHARS = 20_000


def plain_value(raw: str, lang: str = "en") -> str:
    """An infobox field's wikitext -> plain text ('' when nothing is left), dates as an article
    in `lang` writes them. Each pass runs only when its markup is there: most values are a link
    or a number (3x faster on the sample)."""
    text = raw.strip()
    if "<" in text:
        text = _BR.sub("\n", render_sups(drop_spans(drop_comments(text, ""), _REF_OPEN, _REF_CLOSE, "", None, _REF)))
    if "[[" in text:
        text = drop_file_links(text, "")
    if "{{" in text:
        text = render_templates(text, pattern=INNERMOST, lang=lang)
    if "-{" in text and (lang == "zh" or converts(text)):  # zhwiki's "-{zh-hans:台北; zh-hant:臺北;}-"
        text = resolve_conversions(text)
    if "[" in text:
        text = _LINK.sub(lambda m: "" if _hidden_link(m[1].strip()) else (m[2] if m[2] is not None else m[1]), text)
        text = _EXTERNAL.sub(r"\1", text)
    if "<" in text or "'" in text or "&" in text or REMOVED in text:
        text = _TAG.sub("", _QUOTES.sub("", text)).replace("&nbsp;", " ").replace(REMOVED, "")
    if "\n" in text:
        items = [_SPACES.sub(" ", line.strip().lstrip("*#:;").strip().rstrip(",;")) for line in text.split("\n")]
        text = ", ".join(i for i in items if i)
    else:
        text = _SPACES.sub(" ", text.strip().lstrip("*#:;").strip())
    text = _SPACE_PUNCT.sub(r"\1", text).replace("( ", "(").strip(" ,;:")
    if "{{" in text or "}}" in text or "[[" in text or not _WORD.search(text):
        return ""  # markup the reader could not close: no fact rather than a broken one
    return text if len(text) <= MAX_VALUE_CHARS else ""


def attribute_name(key: str) -> str:
    """'official_languages' -> 'official languages'; 'OfficialLang' -> 'official lang'."""
    key = key.strip()
    if not key.islower():
        key = _CAMEL.sub(" ", key).lower()
    key = key.replace("_", " ")
    return _SPACES.sub(" ", key).strip() if "  " in key or "\t" in key or "\u00a0" in key else key


def infobox_spans(wikitext: str) -> list[tuple[int, int]]:
    """(start, end) of each infobox template, nested ones included, by pairing braces; anywhere:
    a section can hold one (Lincoln's "Infobox U.S. Cabinet")."""
    spans, scanned = [], 0
    for m in BOXES.finditer(wikitext):
        end = closing_end(wikitext, m.start(), BRACES, "}}")
        # one that never closes, or boxes nested so deep that counting from each one rereads
        # the page: pair them all at once (the count per box is cheaper for the usual few)
        if end is None or (scanned := scanned + end - m.start()) > 2 * len(wikitext):
            return matched_spans(wikitext, BOX_TOKENS, "}}")[:MAX_INFOBOXES]
        spans.append((m.start(), end))
        if len(spans) == MAX_INFOBOXES:
            break
    return spans


def _pair(fields: dict, attr: str) -> tuple[str, str] | None:
    """leader_title1/leader_name1 -> (the title's value, the name's value): 'prime minister'."""
    m = _PAIR_KEY.match(attr)
    if not m:
        return None
    other = f"{m[1]} {'name' if m[2] == 'title' else 'date'}{m[3]}".strip()
    if other not in fields:
        other = f"{m[1]}{'name' if m[2] == 'title' else 'date'}{m[3]}"
    if other not in fields or not fields[attr] or not fields[other]:
        return None
    if m[2] == "title":
        return fields[attr].lower(), fields[other]
    return f"{m[1] or 'event'}: {fields[attr].lower()}", fields[other]


def facts(wikitext: str, lang: str = "en") -> list[tuple[str, str]]:
    """The (attribute, value) facts of an article's infoboxes, in their order, without repeats;
    `lang`: the article's language (sentences.language), for its dates."""
    out, seen, budget = [], set(), MAX_INFOBOX_READS * len(wikitext)
    for start, end in infobox_spans(wikitext):
        if (budget := budget - (end - start)) < 0:
            break
        args = split_args(wikitext[start + 2:end - 2])[1:]  # [0] is the template's name
        fields = {}
        for arg in args:
            key, eq, value = arg.partition("=")
            attr = attribute_name(key) if eq else ""
            # rendering a value is most of the cost: only for fields that can become facts
            if attr and (not SKIP_KEY.search(attr) or _PAIRED.search(attr)) and len(value) <= MAX_RAW_VALUE_CHARS:
                fields[attr] = plain_value(value, lang)
        paired = set()
        for attr in fields:
            if pair := _pair(fields, attr):
                out.append(pair)
                paired |= {attr, _PAIR_OTHER.sub(lambda m: ("name" if m[1] == "title" else "date") + m[2], attr)}
        for attr, value in fields.items():
            if m := _KEY_UNIT.match(attr):
                unit = KEY_UNITS[m[2]]
                if _NUMBERISH.match(value):
                    value = f"{value}/{unit}" if "density" in m[1] else f"{value} {unit}"
                attr = m[1]
            if (not value or attr in paired or SKIP_KEY.search(attr) or _DIGIT_END.search(attr)
                    or _IMAGE_VALUE.search(value)):
                continue
            out.append((attr, value))
    unique = []
    for fact in out:
        if fact not in seen and fact[0] and fact[1]:
            seen.add(fact)
            unique.append(fact)
    return unique


def headings(titles: list[str]) -> list[str]:
    """The cleaner's section titles ('[[Economy]]' already 'Economy') as plain text."""
    out = []
    for title in titles:
        if "{{" in title or "<" in title or "''" in title or "-{" in title:
            title = plain_value(title)
        if title:
            out.append(title)
    return out


_PROSE_END = re.compile(r"[.!?:;。！？：；][\"'”’)）\]]*$")  # a sentence's end, closing marks after it


def section_openings(text: str, titles: list[str], opening) -> list[tuple[str, str]]:
    """(heading, its first sentence) for each section of the cleaned text; `opening(paragraph)`
    picks the sentence. A heading is a line of the text equal to one of the page's titles,
    found in order with str.find (walking every line in Python cost 3x more). A section whose
    first line is a subsection's heading ("History", then "Ancient history") opens with that
    subsection's first sentence. A line that does not end as prose does ("Sources: Census.gov",
    a caption left by a table) is passed over, twice at most; after one, the next heading
    ends the search, and the section has no opening."""
    out, pos, text = [], 0, "\n" + text + "\n"
    for title in titles:
        at = text.find("\n" + title + "\n", pos)
        if at < 0:
            continue
        pos = start = at + len(title) + 1  # the heading's line end: the next title is looked for from here
        line, passed = "", 0
        while (end := text.find("\n", start + 1)) > 0:
            line = text[start + 1:end]
            if line and line not in titles:
                if _PROSE_END.search(line) and not (passed and line[0].islower()):
                    break  # the section's first paragraph (after a caption, not a sentence's tail)
                passed += 1
            elif line and passed:
                passed = 3  # a heading after a caption: no prose opens this section
            if passed > 2:
                line = ""
                break
            start, line = end, ""  # a blank line, a caption, or a subsection's heading straight after
        if line and (first := opening(line[:400])):  # an opening is <= 240 chars
            out.append((title, first))
    return out


_FRAGMENT = re.compile(r"#[^\n]*")


def link_targets(links: list[str]) -> str:
    """Raw link targets -> the titles they open, newline-separated, each once, in order of
    first use, as linked (MediaWiki ignores the case of a title's first letter: Knowledge.links
    folds it). Whole-string passes where they can be: per-link Python calls were the knowledge
    pass's largest cost (185 k links in the x10 sample; now ~1 % of cleaning)."""
    text = "\n".join(dict.fromkeys(links))
    for ch in "_\u00a0\t":
        if ch in text:
            text = text.replace(ch, " ")
    if "#" in text:
        text = _FRAGMENT.sub("", text)
    titles = (t for t in (t.strip() for t in text.split("\n"))
              if t and not (":" in t and (t.startswith(":") or _hidden_link(t))))
    return "\n".join(dict.fromkeys(titles))


# a biography's first sentence: "Arthur Schopenhauer (22 February 1788 – 21 September 1860) was ...",
# "Andre Agassi (born 29 April 1970) is ...", "Aristotle (384–322 BC) was ...": a name, then a life in
# brackets - born or died, or a span of days of months, or of years BC. A span of bare years is
# not enough: "Ottoman Empire (1299–1922)", "The Hundred Years' War (1337–1453)" name no one
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_LIFE = re.compile(r"^(?!(?:the|an?)\s)[^()]{2,80}\((?:[^()]*?\b(?:born|died|b\.|d\.)\s|"
                   rf"[^()]*?\b{_MONTH}[^()]*?\d{{3,4}}\s*[–-]|[^()]*?\d{{3,4}}\s*[–-]\s*\d{{3,4}}\s*BC\b)", re.I)


def is_person(text: str) -> bool:
    """Whether an article is about a person, by its lead (the graph also reads an infobox's
    birth and death fields): the entity linker then knows the person by surname too."""
    return bool(_LIFE.match(text.lstrip()[:300]))


# the short form a lead gives its subject in brackets: "The American National Standards Institute
# (ANSI) is ...", "International Atomic Time (TAI, from the French ...) is ..."
_LEAD_ACRONYM = re.compile(r"^[^()]{2,120}?\(\s*([A-Z][A-Z0-9&]{1,9})(?=\s*[,;)])")  # not "(SI unit symbol: A)"


_VERB = re.compile(r"\b(?:is|are|was|were|has|have|had|comprises?|consists?)\b|[:;]")


def lead_abbreviation(text: str) -> str:
    """The abbreviation a lead's first brackets give (one of capitals, 2-10 long), or ''."""
    m = _LEAD_ACRONYM.match(text.lstrip()[:200])
    if not m or sum(c.isupper() for c in m[1]) < 2 or _VERB.search(m[0]):
        return ""  # "Transport in Angola comprises: ... (CFL)": a bracket after the sentence's verb is not the subject's
    return m[1]


def article_knowledge(wikitext: str, text: str, found: dict) -> dict:
    """One kept article's share of the knowledge graph: its facts, its outgoing links (each
    target once, in order of first use, newline-separated), its sections' opening sentences, and
    whether it is about a person, the abbreviation its lead gives and the names it writes in bold.
    `found` is what the cleaner collected (clean_wikitext's `found`: links, headings, bold)."""
    return {"facts": facts(wikitext, language(text)), "links": link_targets(found.get("links", [])),
            "sections": section_openings(text, headings(found.get("headings", [])), opening_sentence),
            "person": is_person(text), "abbreviation": lead_abbreviation(text), "names": found.get("bold", [])}
