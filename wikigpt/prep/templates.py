"""
Templates that carry text, rendered as a reader of the page sees them (no I/O, no parser):

    {{convert|72|km|mi}}           -> "72 km"          (the value as written, its unit as a symbol)
    {{convert|1|-|2|km}}           -> "1–2 km"
    {{birth date|1889|4|20}}       -> "20 April 1889"  ("1889年4月20日" in a Chinese article)
    {{hlist|Catalan|Spanish}}      -> "Catalan, Spanish"
    {{nowrap|10 km}}               -> "10 km"

The cleaner renders the quantities in prose with it (QUANTITY_TEMPLATES: before, "It is less
than {{convert|...}} from Italy" lost its number); the infobox reader (facts.py) renders all of
TEXT_TEMPLATES in field values. Any other template is left to the caller, which drops it.
"""
import re

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
# convert's unit codes -> what the page shows; a code not listed is shown as written ("km", "mph")
UNITS = {"C": "°C", "F": "°F", "C-change": "°C", "F-change": "°F", "K": "K", "km2": "km²",
         "sqkm": "km²", "m2": "m²", "sqmi": "sq mi", "sqft": "sq ft", "km3": "km³", "m3": "m³",
         "cuft": "cu ft", "e6km2": "million km²", "e3km2": "thousand km²", "e6acre": "million acres",
         "e6ha": "million ha", "e6carat": "million carats", "e6t": "million tonnes", "acre": "acres",
         "oilbbl": "barrels", "koilbbl/d": "thousand barrels per day", "oilbbl/d": "barrels per day",
         "Moilbbl": "million barrels", "Moilbbl/d": "million barrels per day",
         "Goilbbl": "billion barrels", "Tcuft": "trillion cu ft", "PD/sqmi": "/sq mi",
         "PD/km2": "/km²", "USgal": "US gal", "MUSgal": "million US gal", "impgal": "imp gal",
         "e6m3": "million m³", "e9m3": "billion m³", "ftin": "ft", "lbf": "lbf", "kn": "knots"}
RANGE_WORDS = {"-": "–", "–": "–", "to": " to ", "and": " and ", "or": " or ", "by": " by ",
               "x": " × ", "×": " × ", "+": " + ", "to(-)": " to ", "and(-)": " and ", "+/-": " ± "}
NUMBER = re.compile(r"^[-+−]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:e\d+)?$")
# {{...}} with no template inside, named by a word: one pass renders the innermost ones
INNERMOST = re.compile(r"\{\{\s*([^{}|\n]+?)\s*(\|[^{}]*)?\}\}")
DATES = {"birth date", "death date", "start date", "end date", "birth date and age", "death date and age",
         "dob", "bda", "dda", "film date", "start date and age", "end date and age", "date", "release date"}
YEARS = {"birth year and age", "death year and age", "birth year", "death year"}
LISTS = {"hlist", "flatlist", "plainlist", "plain list", "ubl", "unbulleted list", "ublist", "bulleted list",
         "collapsible list", "enum", "startflatlist", "endflatlist", "startplainlist", "endplainlist"}
WRAPPERS = {"nowrap", "nobr", "nobreak", "small", "big", "smaller", "larger", "nobold", "noitalic",
            "nowrap begin", "start-date", "end-date", "midsize", "resize", "abbr", "url", "marriage", "flag",
            "flagcountry", "flagu", "flag country", "sortname", "plural", "nihongo", "ill", "interlanguage link"}
SECOND = {"lang", "native name", "native phrase", "sort", "transl", "resize"}  # the text is the 2nd argument
# punctuation written as a template: "The American Revolutionary War (1775{{ndash}}1783)" lost its dash
# ("(17751783)"), and so did the infobox's "April 19, 1775{{snds}}September 3, 1783"
PUNCTUATION = {"ndash": "–", "snd": " – ", "snds": " – ", "spnd": " – ", "spaced ndash": " – ", "sndash": " – ",
               "mdash": "—", "mdashb": " — ", "spaced mdash": " — ", "--": "—", "·": " · ", "dot": " · ",
               "middot": "·", "bull": " • ", "•": " • ", "en dash": "–", "em dash": "—"}
QUANTITY_TEMPLATES = {"convert", "cvt", "val", "nowrap", "nobr", "nobreak", "as of", "frac", "nbsp", "'s"} | set(PUNCTUATION)


def split_args(body: str) -> list[str]:
    """'a|b=[[x|y]]|c' -> ['a', 'b=[[x|y]]', 'c']: the '|' inside [[links]] and {{templates}} stay."""
    out, depth, start = [], 0, 0
    for m in re.finditer(r"\{\{|\}\}|\[\[|\]\]|\|", body):
        tok = m[0]
        if tok in ("{{", "[["):
            depth += 1
        elif tok in ("}}", "]]"):
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(body[start:m.start()])
            start = m.end()
    return out + [body[start:]]


def arguments(args: list[str]) -> tuple[list[str], dict]:
    """Template arguments -> (positional, named), values stripped."""
    positional, named = [], {}
    for a in args:
        key, eq, value = a.partition("=")
        if eq and re.match(r"^\s*[\w ]+\s*$", key):
            named[key.strip().lower()] = value.strip()
        else:
            positional.append(a.strip())
    return positional, named


def render_convert(pos: list[str], named: dict) -> str:
    """{{convert|value|[range word|value]...|unit|...}} -> 'value unit' as the page shows it;
    two-part inputs ({{convert|5|ft|6|in|m}}) -> '5 ft 6 in'."""
    if not pos or not NUMBER.match(pos[0].replace(" ", "")):
        return ""
    text, i = pos[0], 1
    while i + 1 < len(pos) and pos[i] in RANGE_WORDS and NUMBER.match(pos[i + 1]):
        text += RANGE_WORDS[pos[i]] + pos[i + 1]
        i += 2
    if i >= len(pos):
        return text
    unit = UNITS.get(pos[i], pos[i])
    text = f"{text}{'' if unit.startswith(('°', '/')) else ' '}{unit}"
    if i + 2 < len(pos) and NUMBER.match(pos[i + 1]) and not NUMBER.match(pos[i + 2]) and pos[i + 2] != pos[i]:
        if pos[i + 2] in ("in", "oz", "ft", "m", "cm", "lb"):  # 5 ft 6 in, 3 lb 4 oz
            text += f" {pos[i + 1]} {pos[i + 2]}"
    return text


def render_date(pos: list[str], named: dict, lang: str = "en") -> str:
    """(year, month, day) -> '20 April 1889' ('April 20, 1889' with mf=yes; '1889年4月20日' when
    lang is 'zh', as zhwiki shows it); a date's own words ({{start date|1990s}}) pass through."""
    parts = [p for p in pos if p and "=" not in p][:3]
    if not parts:
        return ""
    if not parts[0].isdigit():
        return parts[0]
    year = parts[0]
    month = MONTHS[int(parts[1]) - 1] if len(parts) > 1 and parts[1].isdigit() and 1 <= int(parts[1]) <= 12 else ""
    day = str(int(parts[2])) if len(parts) > 2 and parts[2].isdigit() else ""
    if not month:
        return year
    if lang == "zh":
        return f"{year}年{int(parts[1])}月{day + '日' if day else ''}"
    if named.get("mf", "").lower() in ("y", "yes"):
        return f"{month} {day + ', ' if day else ''}{year}"
    return f"{day + ' ' if day else ''}{month} {year}"


def render(name: str, args: list[str], lang: str = "en") -> str | None:
    """One template (innermost: its arguments hold no template) -> its text, or None when it
    carries none that a fact or a sentence needs (the caller then drops it); `lang`, the
    article's language (sentences.language), sets how a date reads."""
    key = name.strip().lower().replace("_", " ")
    pos, named = arguments(args)
    if key in ("convert", "cvt"):
        return render_convert(pos, named)
    if key == "val":
        unit = named.get("u") or named.get("ul") or ""
        return " ".join(x for x in (pos[0] if pos else "", UNITS.get(unit, unit)) if x)
    if key in DATES:
        return render_date(pos, named, lang)
    if key in YEARS:
        return pos[0] if pos else ""
    if key in LISTS:
        return ", ".join(p for p in pos if p)
    if key in ("as of",):
        return ("as of " if named.get("lc") else "As of ") + " ".join(p for p in pos[:3] if p)
    if key == "frac":
        return " ".join(pos[:-2] + ["/".join(pos[-2:])]) if len(pos) >= 2 else "/".join(pos)
    if key == "nbsp":
        return " "
    if key in PUNCTUATION:
        return PUNCTUATION[key]
    if key == "'s":
        return "'s"
    if key in ("circa", "c."):
        return f"c. {pos[0]}" if pos else "c."
    if key in SECOND:
        return pos[1] if len(pos) > 1 else ""
    if key.startswith("lang-"):
        return pos[0] if pos else ""
    if key == "longitem":  # {{longitem|style|text}}
        return pos[-1] if pos else ""
    if key in WRAPPERS:
        return pos[0] if pos else ""
    return None


def render_templates(wikitext: str, drop_others: bool = True, pattern=INNERMOST, max_passes: int = 6,
                     lang: str = "en") -> str:
    """Render the innermost templates that `pattern` matches, inner ones first (a pass per
    level of nesting); a template that carries no text becomes '' (drop_others) or stays."""
    def sub(m):
        text = render(m[1], split_args(m[2][1:]) if m[2] else [], lang)
        return ("" if drop_others else m[0]) if text is None else text

    for _ in range(max_passes):
        done = pattern.sub(sub, wikitext)
        if done == wikitext:
            break
        wikitext = done
    return wikitext


# only the quantity templates match: the callback never runs for the thousands of {{cite ...}}
QUANTITY = re.compile(r"\{\{\s*(%s)\s*(\|[^{}]*)?\}\}" % "|".join(map(re.escape, QUANTITY_TEMPLATES)), re.I)


def render_quantities(wikitext: str) -> str:
    """The cleaner's pass: quantities and other text-carrying wrappers in prose become their
    text before the other templates are dropped."""
    return render_templates(wikitext, drop_others=False, pattern=QUANTITY)
