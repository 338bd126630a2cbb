"""
Wikitext -> clean plain text, with mwparserfromhell: one article at a time, no I/O.

    text = clean_wikitext("Aristotle", wikitext, CleanSettings())   # ((title, text), None)
                                                                     # or (None, why it was dropped)
Kept: prose, headings as plain lines, link texts, quantities ({{convert|72|km|mi}} -> "72 km",
see templates.py). Dropped: references, other templates, tables, files and images, categories,
interlanguage links, comments, HTML tags, and everything from the first trailing section
(References, External links, See also, 参考文献...) on. The knowledge graph's facts are read from
the same wikitext by facts.py; the outgoing links are collected here, where every link passes.
Nothing assumes spaces between words, so Chinese and Japanese clean the same way.
"""
import re
from dataclasses import dataclass

from wikigpt.prep.scan import (closing_end, cut_spans, drop_comments, drop_spans, matched_spans, outermost,
                               reduce_innermost, unmatched_openers)
from wikigpt.prep.templates import render_quantities
from wikigpt.knowledge.sentences import language


# Sections that hold no prose; everything from the first such heading on is dropped.
TRAILING_SECTIONS = {
    # en
    "references", "external links", "see also", "notes", "further reading", "bibliography",
    "sources", "footnotes", "citations", "notes and references", "references and notes",
    # zh
    "参考文献", "参考资料", "參考文獻", "參考資料", "外部链接", "外部連結", "参见", "參見",
    "注释", "註釋", "延伸阅读", "延伸閱讀", "相关条目", "相關條目",
    # de, fr, es
    "einzelnachweise", "weblinks", "siehe auch", "literatur", "anmerkungen",
    "références", "liens externes", "voir aussi", "notes et références",
    "referencias", "enlaces externos", "véase también",
}
# Tags whose contents are not prose (citations, galleries, formulas, tables...).
DROP_TAGS = {"ref", "references", "gallery", "math", "chem", "ce", "timeline", "imagemap",
             "score", "graph", "mapframe", "maplink", "templatestyles", "table", "syntaxhighlight",
             "source", "hiero", "inputbox", "categorytree", "noinclude"}
# Link prefixes that are not article text: files, categories (a few languages)...
HIDDEN_LINK_PREFIXES = {"file", "image", "media", "category", "datei", "bild", "kategorie",
                        "fichier", "catégorie", "archivo", "categoría", "文件", "檔案", "图像",
                        "圖像", "分类", "分類", "wikipedia", "wp", "template", "help", "portal"}
# ...and interlanguage links: [[de:Foo]], [[zh-yue:...]], [[simple:...]]
INTERLANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z]+)*$|^simple$")
DISAMBIGUATION_TEMPLATES = {"disambiguation", "disambig", "dab", "disamb", "hndis", "geodis",
                            "set index article", "消歧义", "消歧義", "disambig-cleanup",
                            "begriffsklärung", "homonymie", "desambiguación"}


@dataclass
class CleanSettings:
    min_chars: int = 200  # articles shorter than this after cleaning are dropped


def _hidden_link(title: str) -> bool:
    if ":" not in title:  # most links: one C-level search instead of the rest (~4 % of cleaning)
        return False
    if title.startswith(":"):  # [[:Category:X]] is a visible link to the category page
        return False
    prefix, colon, _ = title.partition(":")
    prefix = prefix.strip().lower()
    return bool(colon) and (prefix in HIDDEN_LINK_PREFIXES or bool(INTERLANGUAGE.match(prefix)))


# Left where markup was removed, so that a line holding only markup vanishes instead of
# turning into a paragraph break (only lines blank in the source become blank lines).
REMOVED = "\ue000"  # a private-use character: never in real text


def _render(code) -> str:
    """Wikicode -> plain text, keeping prose and dropping markup (recursive)."""
    from mwparserfromhell import nodes

    out = []
    for node in code.nodes:
        if isinstance(node, nodes.Text):
            out.append(str(node.value))
        elif isinstance(node, nodes.Wikilink):
            title = str(node.title).strip()
            if _hidden_link(title):
                out.append(REMOVED)
                continue
            shown = node.text if node.text is not None else node.title  # [[OS&nbsp;X]]: render entities
            out.append(_render(shown).lstrip(":") if node.text is None else _render(shown))
        elif isinstance(node, nodes.ExternalLink):
            if node.brackets and node.title is not None:  # [http://x text] -> text; bare URLs go
                out.append(_render(node.title))
        elif isinstance(node, nodes.Heading):
            out.append(_render(node.title).strip())  # "== History ==" -> "History"
        elif isinstance(node, nodes.Tag):
            tag = str(node.tag).strip().lower()
            if tag in DROP_TAGS:
                out.append(REMOVED)
                continue
            if tag == "br":
                out.append("\n")
            elif node.contents is not None and not node.self_closing:
                out.append(_render(node.contents))
        elif isinstance(node, nodes.HTMLEntity):
            out.append(node.normalize())
        else:  # Template, Comment, Argument
            out.append(REMOVED)
    return "".join(out)


_MAGIC_WORD = re.compile(r"__[A-Z]+__")
# Patterns start with a literal character where they can: the regex engine then jumps to
# candidates instead of trying every position (10x faster on 5 MB of text: 2 vs 18 ms).
_EMPTY_PARENS = [re.compile(r"\((?:[^\S\n]|[,;，；、])*[)）]"), re.compile(r"（(?:[^\S\n]|[,;，；、])*[)）]")]
_PARENS_LEAD = [re.compile(r"(\()(?:[^\S\n]|[,;，；、])+"), re.compile(r"(（)(?:[^\S\n]|[,;，；、])+")]  # "(;, Greek: ...)"
_SPACE_CHARS = "\t\u00a0\u2009\u200b"
_SPACE_RUN = re.compile(r"  +")
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.;:!?，。；：！？])")
_WORDLIKE = re.compile(r"\w")


def normalize_text(text: str) -> str:
    """Collapse spaces inside lines, drop lines with no word character, keep one blank line
    between paragraphs. Never inserts spaces, so it is safe for languages written without them."""
    blank_in_source = [not line.strip() for line in text.split("\n")]
    # whole-text passes (none crosses a line end), ~3x faster than line by line
    text = _MAGIC_WORD.sub("", text.replace(REMOVED, ""))
    for empty, lead in zip(_EMPTY_PARENS, _PARENS_LEAD):
        text = lead.sub(r"\1", empty.sub("", text))
    for ch in _SPACE_CHARS:
        text = text.replace(ch, " ")
    text = _SPACE_RUN.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)  # a space left before punctuation
    lines, blank = [], False
    for was_blank, line in zip(blank_in_source, text.split("\n")):
        if was_blank:  # a paragraph break
            blank = bool(lines)
            continue
        line = line.strip()
        if not _WORDLIKE.search(line):  # only markup was on this line: drop it silently
            continue
        if blank:
            lines.append("")
            blank = False
        lines.append(line)
    return "\n".join(lines)


def drop_tables(wikitext: str) -> str:
    """Remove {| ... |} table blocks line by line. mwparserfromhell gives up on tables with
    broken attributes and returns them as text; lines that open/close tables are unambiguous."""
    out, depth = [], 0
    for line in wikitext.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith("{|"):
            depth += 1
        elif depth and stripped.startswith("|}"):
            depth -= 1
            out.append(REMOVED)
            continue
        out.append(REMOVED if depth else line)
    return "\n".join(out)


# Safety net for markup the parser had to leave as text (e.g. a <ref> holding unbalanced ''):
# <ref ...>...</ref> or <ref .../>, found by scan.drop_spans (a lazy pattern is quadratic)
_LEFTOVER_REF_OPEN, _LEFTOVER_REF_CLOSE = re.compile(r"<ref[^>]*>", re.I), re.compile(r"</ref>", re.I)
_LEFTOVER_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)  # where all close (scan.drop_spans)
_LEFTOVER_TAG = re.compile(r"</?[a-zA-Z][^<>]{0,200}>")
_QUOTE_MARKUP = re.compile(r"''+")  # two quotes: italic, three: bold


# <sup>: a footnote mark goes ("Catalan<sup>a</sup>", "<sup>[1]</sup>", "<sup>†</sup>"); an exponent
# after a number or a unit is kept in superscript ("1.496×10<sup>8</sup> km" -> "1.496×10⁸ km",
# "m/s<sup>-2</sup>" -> "m/s⁻²"); anything else stays as text, as it reads: "H<sup>+</sup>", "E =
# mc<sup>2</sup>", "<sup>137</sup>Cs", "sp<sup>3</sup>", "1<sup>st</sup>". The prose and the infobox
# reader agree. ([^>] bounded: an unclosed "<sup " is not searched to the end of the page from each one.)
_SUP = re.compile(r"<sup\b[^>]{0,200}>(.{0,12}?)</sup>", re.I | re.S)
_FOOTNOTE = re.compile(r"\[\s*[\w\s]{1,6}\]|\(?[a-z]\)?|[†‡*§#¶]+|note \d+", re.I)
_EXPONENT = re.compile(r"[-−–]?\d{1,3}")
_AFTER_QUANTITY = re.compile(r"(?:\d|\b(?:m|km|cm|mm|nm|s|g|kg|ft|mi|K|W|J|N|Pa|Hz))$")
SUPERSCRIPT = str.maketrans("0123456789-−–", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁻⁻")


def render_sups(text: str) -> str:
    """Short <sup>s -> what they say (see above); longer ones are left to the caller."""
    def one(m):
        inner, before = m[1].strip(), text[max(m.start() - 4, 0):m.start()]
        if _FOOTNOTE.fullmatch(inner):
            return ""
        if _EXPONENT.fullmatch(inner) and _AFTER_QUANTITY.search(before):
            return inner.translate(SUPERSCRIPT)
        return inner
    return _SUP.sub(one, text)


_BOLD = re.compile(r"(?<!')('''|''''')(?!')(.{2,120}?)(?<!')\1(?!')")  # bold, or bold italic
_LEAD_END = re.compile(r"\n\s*\n|\n=")  # the first paragraph ends at a blank line or a heading
# markup left, or a phrase in bold rather than a name ("commonly referred to as", "a and ...")
_NOT_A_NAME = re.compile(r"[\[\]{}]|^(?:a|an|and|or)\s|\s(?:as|to|of|and|or|the|a|an|in|by|for|from|with)$", re.I)


def lead_bold(wikitext: str, max_chars: int = 2000) -> list[str]:
    """The names a lead writes in bold, as Wikipedia's style has it for the title and its other
    names ("'''Asphalt''', also known as '''bitumen'''", "'''Actinopterygii''', or the
    '''ray-finned fishes'''"): plain text, links read as their text, at most 80 characters."""
    lead = wikitext.lstrip(" \t\n" + REMOVED)[:max_chars]  # the hatnotes and infobox before it are gone
    lead = lead[:m.start()] if (m := _LEAD_END.search(lead)) else lead
    names = []
    for m in _BOLD.finditer(lead):
        name = _QUOTE_MARKUP.sub("", _SIMPLE_LINK.sub(lambda link: link[2] or link[1], m[2])).strip(" ,.;:")
        if 2 <= len(name) <= 80 and any(c.isalpha() for c in name) and not _NOT_A_NAME.search(name):
            names.append(name)
    return list(dict.fromkeys(names))


def _drop_quotes(wikitext: str) -> str:
    """Italic and bold quotes -> REMOVED. Only a line with bold can hide an apostrophe."""
    if "'''" in wikitext:
        wikitext = "\n".join(_drop_quote_line(line) if "'''" in line else line
                             for line in wikitext.split("\n"))
    return _QUOTE_MARKUP.sub(REMOVED, wikitext)


def _drop_quote_line(line: str) -> str:
    """Italic/bold quotes of one line -> REMOVED, keeping apostrophes the way MediaWiki does:
    in ''A Modest Proposal'''s the three quotes are an apostrophe + the end of the italics."""
    runs = list(_QUOTE_MARKUP.finditer(line))
    sizes = [3 if len(r[0]) == 4 else min(len(r[0]), 5) for r in runs]  # 4 quotes = ' + bold
    if sum(n in (2, 5) for n in sizes) % 2 and sum(n in (3, 5) for n in sizes) % 2:
        first_bold = next((i for i, n in enumerate(sizes) if n == 3), None)
        if first_bold is not None:  # both odd: one bold mark is an apostrophe + an italic mark
            sizes[first_bold] = 2
    out, pos = [], 0
    for r, n in zip(runs, sizes):
        out += [line[pos:r.start()], "'" * (len(r[0]) - n), REMOVED]
        pos = r.end()
    return "".join(out) + line[pos:]


# Cheap pre-passes: most of an article's wikitext is citations and templates (infoboxes,
# {{cite ...}} inside <ref>s), which the parser spends ~60 % of its time building only for
# _render to drop them. Removing them first, and cutting the trailing sections before
# parsing, makes cleaning ~3x faster for the same text. Each pass is linear in the page
# however much markup is left unclosed (scan.py), and what stays unclosed is taken from the
# parser too, which goes quadratic on it: an unclosed <ref ...> or {{ becomes REMOVED (the
# parser showed them as text; the safety nets below then removed the <ref>), and an
# unclosed <!-- hides the rest of the page, as MediaWiki shows it.
# <ref ...>...</ref> or <ref .../> (an opener that ends in "/>" closes itself)
_REF_OPEN, _REF_CLOSE = re.compile(r"<ref(?:\s[^<>]*)?/?>", re.I), re.compile(r"</ref\s*>", re.I)
_REF = re.compile(r"<ref(?:\s[^<>]*)?/>|<ref(?:\s[^<>]*)?>.*?</ref\s*>", re.S | re.I)  # where all close
_INNER_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")  # one without templates inside
_DOUBLE_BRACES, _DOUBLE_BRACKETS = re.compile(r"\{\{|\}\}"), re.compile(r"\[\[|\]\]")
_TEMPLATE_NAME = re.compile(r"\{\{\s*+([^{}|<>\n]*+)(?:\||\}\})")  # possessive: no backtracking
_HEADING = re.compile(r"\n(={1,6})(.+?)\1[ \t]*(?=\n|$)")  # matched in "\n" + text
_LIST_MARKS = re.compile(r"\n[*#:;]+")  # "* item", "# step", ": indented"
_LINK_MARKUP = re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]|'{2,}")


# any template whose name starts like a disambiguation one: a page without one (nearly all) is
# then told by one regex search, not a Python step per template (~4 % of cleaning)
_MAYBE_DISAMBIGUATION = re.compile(r"\{\{\s*(?:%s)" % "|".join(
    re.escape(n).replace("\\ ", "[ _]") for n in sorted(DISAMBIGUATION_TEMPLATES)), re.I)


def _has_disambiguation_template(wikitext: str) -> bool:
    if not _MAYBE_DISAMBIGUATION.search(wikitext):
        return False
    for m in _TEMPLATE_NAME.finditer(wikitext):
        name = m[1].strip().lower().replace("_", " ")
        if name in DISAMBIGUATION_TEMPLATES or name.startswith("disambiguation"):
            return True
    return False


def _cut_trailing_sections(wikitext: str, headings: list | None = None) -> str:
    """Everything before the first References / See also / ... heading; `headings`, if given,
    receives the titles of the sections kept (as plain text, for the knowledge graph)."""
    for m in _HEADING.finditer("\n" + wikitext):
        title = _LINK_MARKUP.sub(r"\1", m[2]).replace(REMOVED, "").strip()
        if title.lower() in TRAILING_SECTIONS:
            return wikitext[:m.start()]  # m.start() is the line end before the heading
        if headings is not None:
            headings.append(title)
    return wikitext


FILE_PREFIXES = ("file", "image", "media", "datei", "bild", "fichier", "archivo", "文件", "檔案",
                 "图像", "圖像")
_FILE = r"\[[ \t]*(?:%s)[ \t]*:" % "|".join(FILE_PREFIXES)  # after the first "["
_FILE_LINK = re.compile(r"\[" + _FILE, re.I)
# "[[File:" opens a file link, any other "[[" a link, "]]" closes: "[[[File:" reads as "[" and
# a file link, as the search for "[[File:" found it
_FILE_TOKENS = re.compile(r"\[%s|\[\[(?!%s)|\]\]" % (_FILE, _FILE), re.I)


def drop_file_links(wikitext: str, replacement: str = REMOVED) -> str:
    """Remove [[File:...]] images with their captions, pairing nested [[links]] to find the
    end: the parser gives up on a caption with unbalanced '' and leaves the link as text. One
    that never closes is left to the parser."""
    out, pos = [], 0
    while m := _FILE_LINK.search(wikitext, pos):
        end = closing_end(wikitext, m.start(), _DOUBLE_BRACKETS, "]]")
        if end is None:  # counting on from each later opener would be quadratic: pair the rest at once
            rest = wikitext[pos:]
            return "".join(out) + cut_spans(rest, outermost(matched_spans(rest, _FILE_TOKENS, "]]")), replacement)
        out += [wikitext[pos:m.start()], replacement]
        pos = end
    return "".join(out) + wikitext[pos:] if out else wikitext


_SIMPLE_LINK = re.compile(r"\[\[([^\[\]{}|\n]*)(?:\|([^\[\]{}\n]*))?\]\]")  # no nesting
_EXTERNAL_OPEN = re.compile(r"\[(?=(?:https?:|ftp:)?//)", re.I)


def _drop_unclosed_external_links(wikitext: str) -> str:
    """The "[" of an external link that no "]" closes on its line -> REMOVED (the parser read
    such a line again from each "[": quadratic; it showed the "[" as text). A line's last "]"
    is looked up once, however many links it holds."""
    out, pos, eol, last_close = [], 0, -1, -1
    for m in _EXTERNAL_OPEN.finditer(wikitext):
        if m.start() > eol:  # the first on its line
            eol = wikitext.find("\n", m.start()) % (len(wikitext) + 1)  # -1 (the last line): its end
            last_close = wikitext.rfind("]", m.start(), eol)
        if m.start() > last_close:
            out += [wikitext[pos:m.start()], REMOVED]
            pos = m.end()
    return "".join(out) + wikitext[pos:] if out else wikitext


_LINK_SPACES = re.compile(r"[ \t\u00a0_]+")


def link_target(inner: str) -> str:
    """'catalan_language#History|Catalan' -> 'Catalan language' (the title MediaWiki opens:
    first letter upper-case, no section); '' for links that are not to an article."""
    if "#" in inner or "|" in inner:
        inner = inner.split("|", 1)[0].split("#", 1)[0]
    target = _LINK_SPACES.sub(" ", inner).strip() if "_" in inner or "  " in inner else inner.strip()
    if ":" in target:
        if _hidden_link(target):
            return ""
        target = target.lstrip(":").strip()
    return target[:1].upper() + target[1:]


def _link_text(m) -> str:
    """[[target|text]] -> text, [[target]] -> target, hidden links (categories, other
    languages) -> REMOVED: what _render does, without the parser building a node."""
    title = m[1].strip()
    if _hidden_link(title):
        return REMOVED
    return m[2] if m[2] is not None else title.lstrip(":")


def _drop_templates(wikitext: str) -> str:
    """Remove {{templates}} innermost first (an infobox nests 3-4 deep): a regex pass per
    level, and past 15 levels (the built-in sample needs 7 at most) scan.reduce_innermost, which is linear
    however deep. A "{{" that no "}}" closes then becomes REMOVED; other unbalanced braces
    are left for the parser, which reads them as text."""
    for _ in range(16):
        shorter = _INNER_TEMPLATE.sub(REMOVED, wikitext)
        if len(shorter) == len(wikitext):
            break
        wikitext = shorter
    else:
        wikitext = reduce_innermost(wikitext, REMOVED)
    return unmatched_openers(wikitext, _DOUBLE_BRACES, "}}", REMOVED) if "{{" in wikitext else wikitext


# zhwiki's language conversion, -{...}- (MediaWiki's LanguageConverter), shown as the zh-hans
# page shows it: "通稱-{zh-hans:台北; zh-hant:臺北;}-" -> "通稱台北", "-{X}-" -> "X" (X is not to
# be converted). Flags before a "|": H (a rule for the page), T (the title), "-" (a rule
# removed), D and N (descriptions) show nothing; A (a rule shown in place), R (raw) and variant
# names show their text.
_CONVERSION = re.compile(r"-\{|\}-")
# "zh-hans:", "巨集=>zh-cn:" (no two quantifiers over the same spaces: linear)
_VARIANT = re.compile(r"(?:^|;)[ \t]*(?:[^;:=\s][^;:=]*=>[ \t]*)?(zh|[a-z]{2,3}-[a-z]{2,5})[ \t]*:")
_FLAG = re.compile(r"[ATRDHN-]|zh|[a-z]{2,3}-[a-z]{2,5}")
PREFERRED_VARIANTS = ("zh-hans", "zh-cn", "zh")  # then the first one given
MAX_CONVERSION_DEPTH = 8  # -{ nests (a rule inside a variant's text); deeper ones are text


def _conversion_text(body: str) -> str:
    """The inside of one -{...}- -> the text the zh-hans page shows there."""
    flags, bar, rest = body.partition("|")
    shown = {f.strip() for f in flags.split(";") if f.strip()} if bar else set()
    if shown and all(_FLAG.fullmatch(f) for f in shown):
        if shown & {"H", "T", "-", "D", "N"}:
            return ""
        if "R" in shown:
            return rest
        body = rest
    variants = list(_VARIANT.finditer(body))
    if not variants:
        return body
    texts = {m[1]: body[m.end():n.start() if n else len(body)].strip().rstrip(";").strip()
             for m, n in zip(variants, variants[1:] + [None])}
    return next((texts[v] for v in PREFERRED_VARIANTS if v in texts), texts[variants[0][1]])


_NAMES_A_ZH_VARIANT = re.compile(r"-\{[^{}]{0,40}?\bzh(?:-[a-z]{2,5})?[ \t]*:")  # "-{zh-hans:", "-{H|zh-cn:"


def converts(text: str) -> bool:
    """Whether text holds zhwiki's conversion markup: Chinese text, or markup that names a zh variant."""
    return "-{" in text and (_NAMES_A_ZH_VARIANT.search(text) is not None or language(text) == "zh")


def resolve_conversions(text: str) -> str:
    """Every -{...}- in the text -> the text it shows (_conversion_text), nested ones first, in
    one pass with a stack: linear in the text. An unclosed "-{" goes and its text stays, so it
    cannot hide the rest of the page; a "}-" with no "-{" is text. Only zhwiki converts
    (converts(): enwiki shows "A-{x} and B" as it is)."""
    stack, pos, deeper = [[]], 0, 0  # stack[-1]: the pieces of the innermost open -{...}-
    for m in _CONVERSION.finditer(text):
        stack[-1].append(text[pos:m.start()])
        pos = m.end()
        if m[0] == "-{":
            if len(stack) > MAX_CONVERSION_DEPTH:
                deeper += 1
                stack[-1].append(m[0])
            else:
                stack.append([])
        elif deeper:
            deeper -= 1
            stack[-1].append(m[0])
        elif len(stack) > 1:
            body = "".join(stack.pop())
            stack[-1].append(_conversion_text(body))
        else:
            stack[-1].append(m[0])
    stack[-1].append(text[pos:])
    return "".join("".join(pieces) for pieces in stack)


def clean_wikitext(title: str, wikitext: str, settings: CleanSettings, found: dict | None = None):
    """One article's wikitext -> ((title, text), None) or (None, reason it was dropped).
    `found`, if given, receives what the knowledge graph reads on the way (every link and
    heading passes here): "links", the targets of the links in order (with repeats), and
    "headings", the titles of the sections kept."""
    import mwparserfromhell

    if _has_disambiguation_template(wikitext) or re.search(r"\((disambiguation|消歧义|消歧義)\)$", title):
        return None, "disambiguation"
    links = found.setdefault("links", []) if found is not None else None
    wikitext = _cut_trailing_sections(drop_comments(wikitext, REMOVED),
                                      found.setdefault("headings", []) if found is not None else None)
    wikitext = render_quantities(drop_tables(drop_spans(wikitext, _REF_OPEN, _REF_CLOSE, REMOVED, REMOVED, _REF)))
    wikitext = render_sups(wikitext)
    wikitext = _drop_unclosed_external_links(drop_file_links(_drop_templates(wikitext)))
    if converts(wikitext):  # after the templates, as MediaWiki converts their output
        wikitext = resolve_conversions(wikitext)
    if found is not None:
        found["bold"] = lead_bold(wikitext)
    wikitext = _LIST_MARKS.sub("\n", "\n" + _drop_quotes(wikitext))[1:]  # parsed as tags, then dropped
    if links is None:
        wikitext = _SIMPLE_LINK.sub(_link_text, wikitext)
    else:
        def seen(m):  # _link_text, also noting the target (one call per link, not two)
            links.append(m[1])
            title = m[1].strip()
            if ":" in title and _hidden_link(title):
                return REMOVED
            return m[2] if m[2] is not None else title.lstrip(":")
        wikitext = _SIMPLE_LINK.sub(seen, wikitext)
    if "[[" in wikitext:  # a link that never closes: its "[[" goes, its text stays (see _drop_templates)
        wikitext = unmatched_openers(wikitext, _DOUBLE_BRACKETS, "]]", REMOVED)
    code = mwparserfromhell.parse(wikitext)
    for i, node in enumerate(code.nodes):  # a trailing heading the regex could not read
        if (isinstance(node, mwparserfromhell.nodes.Heading)
                and node.title.strip_code().strip().lower() in TRAILING_SECTIONS):
            code = mwparserfromhell.wikicode.Wikicode(code.nodes[:i])
            break
    text = drop_spans(_render(code), _LEFTOVER_REF_OPEN, _LEFTOVER_REF_CLOSE, REMOVED, None, _LEFTOVER_REF)
    text = _QUOTE_MARKUP.sub("", _LEFTOVER_TAG.sub(REMOVED, text))
    return finish_article(title, text, settings)


def finish_article(title: str, text: str, settings: CleanSettings):
    text = normalize_text(text)
    if len(text) < settings.min_chars:
        return None, "too_short"
    return (title, text), None
