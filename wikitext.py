"""
Wikitext -> clean plain text, with mwparserfromhell: one article at a time, no I/O.

    text = clean_wikitext("Aristotle", wikitext, CleanSettings())   # ((title, text), None)
                                                                     # or (None, why it was dropped)
Kept: prose, headings as plain lines, link texts. Dropped: references, templates, tables,
files and images, categories, interlanguage links, comments, HTML tags, and everything from
the first trailing section (References, External links, See also, 参考文献...) on.
Nothing assumes spaces between words, so Chinese and Japanese clean the same way.
"""
import re
from dataclasses import dataclass


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
            out.append(_render(node.text) if node.text is not None else title.lstrip(":"))
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


def _is_disambiguation(code) -> bool:
    for t in code.filter_templates(recursive=False):
        name = str(t.name).strip().lower().replace("_", " ")
        if name in DISAMBIGUATION_TEMPLATES or name.startswith("disambiguation"):
            return True
    return False


_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_EMPTY_PARENS = re.compile(r"[(（][\s,;，；、]*[)）]")
_PARENS_LEAD = re.compile(r"([(（])[\s,;，；、]+")  # "(;, Greek: ...)" left by a removed template
_SPACES = re.compile(r"[ \t\u00a0\u2009\u200b]+")
_WORDLIKE = re.compile(r"\w")


def normalize_text(text: str) -> str:
    """Collapse spaces inside lines, drop lines with no word character, keep one blank line
    between paragraphs. Never inserts spaces, so it is safe for languages written without them."""
    lines, blank = [], False
    for line in text.split("\n"):
        if not line.strip():  # blank in the source: a paragraph break
            blank = bool(lines)
            continue
        line = line.replace(REMOVED, "")
        line = _PARENS_LEAD.sub(r"\1", _EMPTY_PARENS.sub("", _MAGIC_WORD.sub("", line)))
        line = _SPACES.sub(" ", line).strip()
        line = re.sub(r" ([,.;:!?，。；：！？])", r"\1", line)  # a space left before punctuation
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


# Safety net for markup the parser had to leave as text (e.g. a <ref> holding unbalanced '').
_LEFTOVER_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_LEFTOVER_TAG = re.compile(r"</?[a-zA-Z][^<>]{0,200}>")
_QUOTE_MARKUP = re.compile(r"'{2,}")  # two quotes: italic, three: bold


def clean_wikitext(title: str, wikitext: str, settings: CleanSettings):
    """One article's wikitext -> ((title, text), None) or (None, reason it was dropped)."""
    import mwparserfromhell

    code = mwparserfromhell.parse(drop_tables(wikitext))
    if _is_disambiguation(code) or re.search(r"\((disambiguation|消歧义|消歧義)\)$", title):
        return None, "disambiguation"
    # cut at the first trailing reference-like section
    for i, node in enumerate(code.nodes):
        if (isinstance(node, mwparserfromhell.nodes.Heading)
                and node.title.strip_code().strip().lower() in TRAILING_SECTIONS):
            code = mwparserfromhell.wikicode.Wikicode(code.nodes[:i])
            break
    text = _LEFTOVER_REF.sub(REMOVED, _render(code))
    text = _QUOTE_MARKUP.sub("", _LEFTOVER_TAG.sub(REMOVED, text))
    return finish_article(title, text, settings)


def finish_article(title: str, text: str, settings: CleanSettings):
    text = normalize_text(text)
    if len(text) < settings.min_chars:
        return None, "too_short"
    return (title, text), None
