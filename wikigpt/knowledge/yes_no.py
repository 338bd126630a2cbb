"""
Yes or no: whether a question asks it ("Is X ...?", "X是Y吗？"), and what the evidence says to it:
"Yes" / "No" (是的 / 不是) before the sentence that settles it, or nothing settled ("not found").
The evidence reader (evidence.py) ranks the candidates; this reads the best few.

    asks_yes_or_no("Is the aardvark related to the pig?")     # True
    asks_yes_or_no("你知道长江有多长吗？")                      # False: it asks how long
    settle(question, asked, ranked)    # [Item('yes/no', ..., 'No: The aardvark is not ...'), ...]
"""
import re
from dataclasses import replace

from wikigpt.knowledge.analysis import CJK_RUN, terms
from wikigpt.knowledge.found import Item

YES_NO = re.compile(r"^\s*(?:is|are|was|were|do|does|did|can|could|has|have|had|will|would|should)\b", re.I)
# Chinese asks yes or no at its end (吗) or with 是否 / 是不是 / 有没有 inside, unless a question word
# asks for something ("你知道长江有多长吗？" asks how long) or it asks to be told ("你知道孔子吗？", as
# "Do you know ...?" in English: evidence.Reader.rank)
ZH_YES_NO = re.compile(r"[吗嗎][？?！!。.\s]*$|是否|是不是|有没有|有沒有|能否|可否|对不对|對不對")
ZH_ASKS_WHAT = re.compile(r"什么|什麼|哪|谁|誰|多少|几(?!乎)|幾(?!乎)|多[长長高大远遠重久深]|怎么|怎麼|为什么|為什麼|如何|"
                          r"何时|何時|知道|了解|认识|認識|介绍|介紹|[讲講说說]{2}")
NEGATION = re.compile(r"\b(?:not|no|never|neither|nor|none|unrelated|outside|without|unsupported|disproven|"
                      r"debunked|myths?|false|refuted)\b|n't\b", re.I)  # "unsupported theories blaming vaccines"
# a Chinese "not", counted where what is asked follows it (没有冬眠; not 无法从中逃脱 in a sentence
# about how strong a black hole's gravity is), and a claim called wrong ("这一说法是错误的")
ZH_NEGATION = re.compile(r"不是|并非|並非|并不|並不|不属|不屬|没有|沒有|从未|從未|尚未|并未|並未|不能|无法|無法|不可能|不会|不會")
ZH_NEGATED_SPAN = 8  # characters after a negation that it negates
ZH_WRONG = re.compile(r"错误|錯誤|不正确|不正確|不属实|不屬實")
# what a sentence leaves out of what it says: "in every province except British Columbia", "corrosive,
# but there are exceptions such as carboranes and boric acid"
EXCEPTED = re.compile(r"\b(?:except(?:\s+for)?|exceptions?(?:\s+(?:such as|like|being|are|is|include|including|of))?|"
                      r"other than|apart from)\s+([^.;:,()]{1,40})(?=\s*(?:[.;:,()]|$))", re.I)  # a name, not a clause
# a Chinese comparison: what is compared to, then how (比液态水小); of opposite words, one answers the other
_OPPOSITES = ["大小", "高低", "高矮", "多少", "长短", "長短", "重轻", "重輕", "早晚", "快慢", "深浅", "深淺", "远近",
              "遠近", "冷热", "冷熱", "强弱", "強弱", "新旧", "新舊"]
ZH_OPPOSITE = {(x, y) for a, b in _OPPOSITES for x, y in ((a, b), (b, a))}
ZH_COMPARED = re.compile(rf"比([^，,。？?！!；;]{{1,12}}?)([{''.join(sorted(set(''.join(_OPPOSITES))))}])")
# the share of a yes/no question's words (IDF-weighted) its evidence must hold: all of them left most
# unsettled ("Is autism more common in boys?" - "It occurs four to five times more often in boys");
# on dev's 28, 0.7 answers 16 right and 2 wrong (all: 11 and 1; 0.6: 17 and 3)
SETTLED = 0.7
UNSETTLED = 0.6  # the weight of evidence that does not settle it: below any threshold
SETTLES = 5  # the best items read for one that settles it


def asks_yes_or_no(form: str) -> bool:
    """Whether a question (read after its lead-in) asks yes or no: "Is X ...?", "X是Y吗？"."""
    return bool(YES_NO.match(form) or ZH_YES_NO.search(form) and not ZH_ASKS_WHAT.search(form))


def settle(question: str, asked, ranked: list[Item]) -> list[Item]:
    """A yes/no question is answered "Yes" or "No" with the evidence only when the evidence
    settles it: one of the best five covers SETTLED of what is asked (`asked`: evidence.Asked),
    and, where the question compares (比...大), compares the same things. "No" when the evidence
    or the question, not both, is negated ("The aardvark is not closely related to the pig"), or
    the evidence compares the other way (冰的密度比水大吗？ - "冰的密度比液态水小"). Otherwise
    every item falls below any threshold: "not found", never a bare sentence."""
    low = [replace(i, score=round(i.score * UNSETTLED, 4)) for i in ranked]
    wanted = set().union(*asked.covers.values())
    for item in ranked[:SETTLES]:
        if item.kind not in ("sentence", "lead", "section") or not asked.weights or \
                asked.coverage(set(terms(item.text)) | set(terms(item.attribute))) < SETTLED:
            continue
        compared = comparison(question, item.text)
        if compared == "unknown":
            continue  # 黄河比长江长吗？ is not settled by a sentence that compares nothing
        no = says_no(item.text, wanted) != says_no(ZH_YES_NO.sub("", question), wanted)
        if any(set(terms(m[1])) & set(asked.weights) for m in EXCEPTED.finditer(item.text)):
            no = not no  # what it says, it says of all but the thing asked ("... except British Columbia")
        no = no != (compared == "opposite")
        said = ("不是：" if no else "是的：") if CJK_RUN.search(question) else ("No: " if no else "Yes: ")
        return [replace(item, kind="yes/no", text=f"{said}{item.text}")] + low
    return low


def says_no(text: str, wanted: set) -> bool:
    """Whether a text is negated: by an English "not" anywhere (the sentences are short), by a
    Chinese one before a word of what is asked (`wanted`: the terms that cover it), or by calling
    the claim wrong."""
    if not CJK_RUN.search(text):
        return bool(NEGATION.search(text))
    return bool(ZH_WRONG.search(text)) or any(set(terms(text[m.end():m.end() + ZH_NEGATED_SPAN])) & wanted
                                               for m in ZH_NEGATION.finditer(text))


def comparison(question: str, text: str) -> str | None:
    """What a text says to a Chinese question's comparison (A比B大吗？): "same", "opposite" (B比A大,
    or A比B小), "unknown" (it compares nothing with B); None when the question compares nothing."""
    asked = ZH_COMPARED.search(question)
    if not asked:
        return None
    other, how = asked[1], asked[2]
    for said in ZH_COMPARED.finditer(text):
        if other in said[1] or said[1] in other:  # compared to the same thing: 比水 / 比液态水
            same_order = True
        elif other in text[max(0, said.start() - 12):said.start()]:  # the other way round
            same_order = False
        else:
            continue
        if said[2] != how and (how, said[2]) not in ZH_OPPOSITE:
            continue  # another property (比水重 for 比水大)
        return "same" if (said[2] == how) == same_order else "opposite"
    return "unknown"
