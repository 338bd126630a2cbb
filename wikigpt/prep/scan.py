"""
Paired markup found in one left-to-right pass, in time linear in the page whatever is left
unclosed. A lazy pattern such as `<!--.*?-->` or `<ref>.*?</ref>` searches to the end of the
page for each opener that has no closer, and so does counting brackets from each opener: on a
page of unclosed openers that is quadratic (140 kB of "<!--" took 7 s to clean). Here a
closer is searched for once per opener that has one, and never again once none is left;
brackets are matched with one stack.
"""
import re


def drop_comments(text: str, replacement: str) -> str:
    """<!-- ... --> -> replacement. A comment that never closes hides the rest of the page, as
    MediaWiki shows it."""
    out, pos = [], 0
    while (start := text.find("<!--", pos)) >= 0:
        out += [text[pos:start], replacement]
        end = text.find("-->", start + 4)
        if end < 0:
            return "".join(out)
        pos = end + 3
    return "".join(out) + text[pos:] if out else text


def drop_spans(text: str, opener: re.Pattern, closer: re.Pattern, replacement: str, unclosed: str | None = None,
               pattern: re.Pattern | None = None) -> str:
    """What re.sub(opener + '.*?' + closer, replacement) does (an opener that ends in "/>"
    closes itself), in one pass. An opener without a closer stays, or becomes `unclosed` if
    given. Once the closer is not found after an opener, it is not after any later one.
    `pattern`, that lazy pattern itself, is used where every opener has a closer after it:
    then it never reads past a closer, and its one pass in C is the faster."""
    if pattern is not None and _all_closed(text, opener, closer):
        return pattern.sub(replacement, text)
    out, pos, at, closes = [], 0, 0, True
    while m := opener.search(text, at):
        at = m.end()
        if m[0].endswith("/>"):
            end = m.end()
        elif closes and (c := closer.search(text, m.end())):
            end = c.end()
        else:
            closes = False
            if unclosed is None:
                continue
            out += [text[pos:m.start()], unclosed]
            pos = at
            continue
        out += [text[pos:m.start()], replacement]
        pos = at = end
    return "".join(out) + text[pos:] if out else text


def _all_closed(text: str, opener: re.Pattern, closer: re.Pattern) -> bool:
    """Whether no opener (but one that closes itself) comes after the last closer."""
    last = re.compile(r"(?s:.*)(?:%s)" % closer.pattern, closer.flags).match(text)  # from the end back: linear
    return all(m[0].endswith("/>") for m in opener.finditer(text, last.end() if last else 0))


def matched_spans(text: str, tokens: re.Pattern, close: str) -> list[tuple[int, int]]:
    """(start, end) of every opener that `tokens` matches longer than two characters ("[[File:",
    "{{Infobox"), paired by one stack with the `close` tokens ("]]", "}}"; any other token opens
    too, and nests), in order of start. Tokens are read from the start of the text once, not
    from each opener again. (No named groups in `tokens`: they make re scan 6x slower.)"""
    stack, spans = [], []
    for t in tokens.finditer(text):
        if t[0] == close:
            if stack:
                start, wanted = stack.pop()
                if wanted:
                    spans.append((start, t.end()))
        else:
            stack.append((t.start(), len(t[0]) > 2))
    return sorted(spans)


def closing_end(text: str, start: int, tokens: re.Pattern, close: str) -> int | None:
    """Where the bracket opened at `start` closes, counting `tokens` ("[[" and "]]", say) from
    there; None if it never does. Cheap for an opener that closes (most): the scan stops there;
    the callers pair the rest with matched_spans after the first that never closes."""
    depth = 0
    for t in tokens.finditer(text, start):
        depth += -1 if t[0] == close else 1
        if depth == 0:
            return t.end()
    return None


def outermost(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans not inside an earlier one (spans sorted by start, each nested or apart)."""
    out = []
    for start, end in spans:
        if not out or start >= out[-1][1]:
            out.append((start, end))
    return out


def cut_spans(text: str, spans: list[tuple[int, int]], replacement: str) -> str:
    """Text with each of the (disjoint, sorted) spans replaced."""
    out, pos = [], 0
    for start, end in spans:
        out += [text[pos:start], replacement]
        pos = end
    return "".join(out) + text[pos:]


_BRACE = re.compile(r"[{}]")


def reduce_innermost(text: str, replacement: str) -> str:
    """What repeating re.sub(r"\\{\\{[^{}]*\\}\\}", replacement) until nothing changes gives, in
    one pass: a shift-reduce over the braces (each innermost {{...}} is reduced when its last
    brace is read; a reduction never makes one to its left, so no rescan is needed). The
    repeated pattern takes one pass per level of nesting: quadratic on deep nesting."""
    out, pos = [], 0  # "{", "}", or a list of text pieces without braces
    for m in _BRACE.finditer(text):
        if m.start() > pos:
            _add_text(out, text[pos:m.start()])
        pos = m.end()
        if m[0] == "}" and out[-1:] == ["}"] and _reducible(out):
            del out[-(4 if isinstance(out[-2], list) else 3):]
            _add_text(out, replacement)
        else:
            out.append(m[0])
    if pos < len(text):
        _add_text(out, text[pos:])
    return "".join(p if isinstance(p, str) else "".join(p) for p in out)


def _reducible(out: list) -> bool:
    """Whether out ends in "{{", text without braces (or none), "}" (the next "}" closes it)."""
    if len(out) >= 4 and isinstance(out[-2], list):
        return out[-3] == "{" and out[-4] == "{"
    return len(out) >= 3 and out[-2] == "{" and out[-3] == "{"


def _add_text(out: list, text: str):
    if out and isinstance(out[-1], list):
        out[-1].append(text)
    else:
        out.append([text])


def unmatched_openers(text: str, tokens: re.Pattern, close: str, replacement: str) -> str:
    """Each token of `tokens` but `close` that no `close` pairs with -> replacement."""
    stack = []
    for t in tokens.finditer(text):
        if t[0] != close:
            stack.append(t)
        elif stack:
            stack.pop()
    return cut_spans(text, [(t.start(), t.end()) for t in stack], replacement) if stack else text
