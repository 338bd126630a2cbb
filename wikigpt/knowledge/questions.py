"""
What a question asks, by its words: the words every question has, the table from everyday words
to the words infobox fields and section headings use (en + zh), the type of answer asked for
(a count, a number, a date, a person, where someone is from) and whether a text holds one the
question does not already say, pronouns, a conversation's lead-ins and
topic switches, and acronyms spelled out. The evidence reader (evidence.py)
scores candidates with these; nothing here reads the index or the graph.

    ASKED["born"]                                  # 'birth': the infobox's birth date, birth place
    has_new("person", "Commander Frank Borman", set(terms("Who commanded Apollo 8?")))   # True
    spelled_out("ASCII", "the American Standard Code for Information Interchange (ASCII) is")
"""
import re
from bisect import bisect_left, bisect_right
from collections import Counter

from wikigpt.knowledge.analysis import terms
from wikigpt.knowledge.sentences import CJK
from wikigpt.knowledge.yes_no import asks_yes_or_no

# words every question has: not what it asks about
QUESTION_WORDS = set("what who whom whose which why how many much me tell about do does did you know can could "
                     "please explain describe give is are was were there any it its s called us i "
                     "use uses used have has had known famous he his him she her they their them this that wanna want "
                     "whats what's who's define".split())  # "What currency does X use?", "define X"
# what people type around a question ("so what is art", "wait, is X actually ...", "any idea who ...")
QUESTION_WORDS |= set("so wait ok okay hey hi um uh btw actually anyone idea wondering curious quick question just "
                      "really exactly".split())
ZH_QUESTION_WORDS = ["请告诉我关于", "告诉我关于", "介绍一下", "你知道", "是什么", "是哪里", "是哪儿", "在哪里", "在哪儿",
                     "是谁", "是多少", "有多少", "是哪个", "是哪些", "是几", "什么", "哪里", "哪儿", "哪个", "哪些",
                     "多少", "告诉", "关于", "介绍", "知道", "请问", "一下", "的事", "吗", "呢", "谁", "哪", "是", "的",
                     "请", "我", "你", "了", "有", "在", "？", "。", "！",
                     # forms of "which" / "whether" (a follow-up's 它 / 他 / 她: ZH_LEAD)
                     "哪一个", "哪一位", "哪一座", "哪一", "哪座", "哪位", "是不是", "是否", "有没有",
                     # everyday forms: 是啥 / 叫啥 (what), 还有多少 (how many are left), 怎么 / 如何 (how)
                     "是啥", "叫啥", "啥", "还有多少", "还有", "是怎么", "怎么", "怎样", "如何", "为什么",
                     # what it is called (叫 / 称为 is the sentence's word, not asked), who knows, a last particle
                     "叫什么", "叫做什么", "称为什么", "有人知道", "有谁知道", "谁知道", "我想知道", "想知道",
                     "啊", "呀", "嘛", "啦", "哦",
                     # what someone does (是干嘛的: who is X), "this / that" (这个词 is the word the sentence says)
                     "是干嘛的", "干嘛的", "是干什么的", "干什么的", "这个", "那个",
                     # "what thing / what place" (东西, 地方: the question's words, not the sentence's), "how" (咋)
                     "什么东西", "啥东西", "哪个地方", "什么地方", "啥地方", "咋",
                     # "(to) where": 被流放到哪里, 去哪儿 (the sentence says 流放夜郎)
                     "到哪里", "到哪儿", "到哪", "去哪里", "去哪儿", "去哪",
                     # hedges and fillers that say nothing of what is asked, as English's "roughly", "on
                     # earth", "in all" (大概 人身上的水占体重多少, 一共分成几个州): a Wikipedia sentence rarely
                     # writes them, so they weighed as the rarest words asked and the answer scored low
                     # (一共 and 总共 before a verb: 一共 alone is inside 第一共和国)
                     "大概", "大约", "差不多", "到底", "究竟", "一共有", "一共是", "一共分", "总共有", "总共是", "算是",
                     "能不能", "可不可以", "后来"]
# "which" with its measure word (哪首 "which song", 哪部, 哪条): the measure word is no word of what is asked
ZH_QUESTION_WORDS += [f"哪{m}" for m in "首部本条所家种场届支只颗块"]
# "how many" with its measure word (几个 联邦州, 几种), and "what percent": a number is asked (ANSWER_TYPES)
ZH_QUESTION_WORDS += [f"几{m}" for m in "个种位次座条颗所家本只届名"] + ["百分之多少", "百分之几"]  # (几部分: parts)
# the words a sentence says what something is called with (ASKED's 被称为, 被誉为)
CALLED = "称为 誉为 称作 叫做 又称 别称 俗称"
# a question's word -> the words infobox fields and section headings use for it (en + zh)
ASKED = {
    "capital": "capital", "首都": "capital", "首府": "capital", "population": "population",
    "人口": "population", "inhabitants": "population", "people": "population", "live": "population residence",
    "lives": "population residence", "lived": "residence", "born": "birth",
    "birth": "birth", "出生": "birth", "生日": "birth date", "died": "death", "die": "death",
    "去世": "death", "逝世": "death", "死亡": "death", "area": "area", "面积": "area", "big": "area",
    "size": "area", "language": "languages lang", "languages": "languages lang",
    "语言": "languages lang", "spoken": "languages", "currency": "currency", "货币": "currency",
    "money": "currency", "president": "president", "总统": "president", "总理": "prime minister",
    "首相": "prime minister", "leader": "president prime minister premier leader",
    "领导人": "president prime minister premier leader", "anthem": "anthem", "国歌": "anthem",
    "motto": "motto", "格言": "motto", "城市": "city", "最大": "largest", "founded": "established founded",
    "成立": "established founded", "建立": "established founded", "teacher": "influences advisor teacher",
    "老师": "influences advisor teacher", "wife": "spouse", "husband": "spouse", "妻子": "spouse",
    "丈夫": "spouse", "配偶": "spouse", "国籍": "nationality citizenship", "wrote": "author notableworks works",
    "作者": "author", "religion": "religion", "宗教": "religion", "government": "government",
    "政府": "government", "官方": "official", "where": "place location", "when": "date year",
    "经济": "economy", "历史": "history", "地理": "geography", "文化": "culture", "政治": "politics",
    "气候": "climate", "教育": "education", "体育": "sports", "交通": "transport", "军事": "military",
    "名字": "etymology name", "名称": "etymology name", "时区": "time zone", "货币代码": "currency code",
    "directed": "director", "composed": "composer", "illustrated": "illustrator", "painted": "painter artist",
    "invented": "inventor", "designed": "designer", "author": "author writer", "commanded": "commander",
    "nickname": "nickname nicknamed", "nicknamed": "nickname", "named": "named name", "start": "began start date",
    "started": "began start date", "begin": "began start date", "end": "end ended date", "ended": "end ended date",
    # an event's infobox date is its span ("April 19, 1775 – September 3, 1783")
    "happen": "date", "happened": "date", "launched": "launch launched", "launch": "launch launched",
    # the words of everyday questions for common infobox fields (birth place, alma mater, runtime, ...)
    "town": "place city", "city": "city capital place", "village": "place", "real name": "birth name",
    "university": "alma mater education", "college": "alma mater education", "studied": "alma mater education",
    "educated": "alma mater education", "school": "alma mater education school", "long": "runtime length duration",
    "heavy": "weight weighs mass", "tall": "height", "deep": "depth", "wide": "width",  # how heavy: its weight
    "flew": "crew members", "astronauts": "crew members", "crew": "crew members", "married": "spouse",
    "dad": "father", "father": "father", "mom": "mother", "mum": "mother", "mother": "mother", "kids": "children", "often": "frequency", "biggest": "largest", "largest": "biggest",
    "killed": "death killed", "kill": "death killed", "shot": "shot assassination assassinated",
    "supervised": "doctoral advisor", "supervisor": "doctoral advisor", "advisor": "doctoral advisor",
    "phd": "doctoral alma mater", "doctorate": "doctoral alma mater", "job": "occupation", "profession": "occupation",
    "buried": "resting burial",
    "eat": "eat feeds diet food", "eats": "eat feeds diet food", "food": "food feeds diet",
    "buy": "buy bought purchased purchase", "bought": "bought purchased purchase", "pay": "paid purchased price cost",
    "sell": "sold sale", "sold": "sold sale",
    # Chinese forms of "when", "where ... born", "how tall / long"
    "什么时候": "date year", "何时": "date year", "哪一年": "year date", "出生地": "birth place",
    "出生于哪里": "birth place", "出生在哪里": "birth place", "在哪里出生": "birth place", "在哪出生": "birth place",
    "出生在哪": "birth place", "出生在哪儿": "birth place", "在哪儿出生": "birth place",
    # "how tall / long / far / heavy": the field's name, and the words a Chinese sentence says it with (a
    # sentence has no field name: "明长城的总长度为8,851.8公里")
    "高度": "height elevation", "多高": "height elevation 高度 海拔", "海拔": "elevation", "长度": "length",
    "多长": "length 长度 全长", "多远": "distance 距离", "多重": "weight mass 重量 质量",
    "哪天": "date", "哪一天": "date", "哪年": "year date", "啥时候": "date year", "多大": "area size 面积",
    "意思": "meaning 意为 意思 意指 含义",  # 在藏语中意为“大地之母”
    # the Chinese words for infobox fields zhwiki names in English ({{Infobox country |calling_code = +81}},
    # {{Infobox chembox |MolarMass = ...}}, a planet's radius and age). 区号 is the calling code's word only
    # ("calling": "code" alone is also a postal code's); 几岁 stays asked (a person's age is "N岁" in a sentence)
    "区号": "calling", "电话区号": "calling", "国际电话区号": "calling", "摩尔质量": "molar mass", "分子量": "molar mass",
    "半径": "radius", "质量": "mass", "年龄": "age", "温度": "temperature", "密度": "density", "熔点": "melting",
    "沸点": "boiling", "化学式": "formula", "分子式": "formula", "周期": "period", "域名": "cctld domain",
    # what someone or something is said to be (被称为诗仙的是谁？ - 被后人誉为“诗仙”); not 叫做 / 称为 alone,
    # which ask a name (德国的首都叫做什么？ asks the capital)
    "被称为": CALLED, "被叫做": CALLED, "被誉为": CALLED, "誉为": CALLED,
}
# A question may be written in traditional characters (zhwiki mixes both): the tables' Chinese words
# are recognised in either form (of the characters they use: 么 -> 麼, 货币 -> 貨幣, ...)
TRADITIONAL = str.maketrans("么谁里儿个几请诉关于绍问吗长时为货币积语总统国领导师经济历气体军称区码们没约话东发誉电号质径龄岁温点",
                            "麼誰裡兒個幾請訴關於紹問嗎長時為貨幣積語總統國領導師經濟歷氣體軍稱區碼們沒約話東發譽電號質徑齡歲溫點")
ASKED |= {w.translate(TRADITIONAL): v for w, v in ASKED.items() if re.match(f"[{CJK}]", w)}
ZH_QUESTION_WORDS = sorted(set(ZH_QUESTION_WORDS) | {w.translate(TRADITIONAL) for w in ZH_QUESTION_WORDS},
                           key=lambda w: (-len(w), w))  # removed longest first: "是什么" before "什么"
# what a question asks for, by its words; evidence of another type is worth less ("When did it land?"
# answered by a sentence without a date: 9 of the 34 wrong answers of the natural dev set before).
# Chinese first, by its own words: 几月几号 is a date, 多少 any number (温度是多少: "5,772K"; a count of
# things is English's "how many"), 几乎 ("almost") none
ANSWER_TYPES = [("date", re.compile(r"[什啥][么麼]?时候|[什啥][麼]?時候|何时|何時|哪一?[年天日]|[几幾][月号號]|哪个世纪|哪個世紀")),
                ("number", re.compile(r"多少|[几幾](?!乎)|多[高长長远遠大重深久宽寬]")),
                ("count", re.compile(r"\bhow (?:many|much)\b|^\s*(?:the\s+)?number of\b|\bwhat(?:'s| is)? the number of\b|"
                                     r"\bwhat (?:share|fraction|proportion|percentage|percent)\b", re.I)),
                ("number", re.compile(r"\bhow (?:long|tall|big|old|far|high|deep)\b", re.I)),
                ("date", re.compile(r"^\s*when\b|\bwhat (?:year|date|day)\b|\bwhich year\b|\bin what year\b", re.I)),
                ("person", re.compile(r"^\s*(?:who|whom|whose)\b|\bwho(?:'s| is| was)\b", re.I)),
                # "where was he from?", "what country was she from", "what nationality was X?"
                ("origin", re.compile(r"\b(?:where|what (?:country|state|nation|nationality))\b"  # bounded: linear
                                      r"(?![^?!.]{0,80}?\b(?:name|word)\b)[^?!.]{0,80}?\bfrom\b|\bnationality\b", re.I))]
MEASURED_TYPES = ("count", "number", "date", "person")  # whose distance to the asked words is measured (typed_distance)
# a name's letters: "Frank Borman", "Frank O'Connor", "Émile Zola", "Mileva Marić", "Łukasz" (Latin-1,
# and Latin Extended-A, whose upper and lower case letters alternate: counted as either)
_UPPER, _LOWER = "[A-ZÀ-ÖØ-ÞĀ-ž]", "[a-zß-öø-ÿĀ-ž]"
_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
# numbers written as words count ("structured into five sections", "Fifteen statuettes", "up to a
# dozen dens"); not "one", which is mostly "one of the ..."
NUMBER_WORDS = ("two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
                "seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundreds?|"
                "thousands?|millions?|billions?|dozens?")
_ZH_NUMERALS = "[一二三四五六七八九十两兩百千万萬亿億]+(?=[个個位座条條种種次所只隻名])"  # 九个省, 两种元素
HAS_TYPE = {"number": re.compile(rf"\d+(?:[.,]\d+)*|\b(?:{NUMBER_WORDS})\b|{_ZH_NUMERALS}", re.I),
            # 1989年11月9日, 14世纪: no word boundary between a digit and a Chinese character
            "date": re.compile(rf"\b\d{{3,4}}\b|\b(?:{_MONTHS})\b|\bcentury\b|\d{{1,4}}年|\d{{1,2}}月|世[纪紀]", re.I),
            "person": re.compile(rf"(?<!^)(?<![.!?] )\b{_UPPER}{_LOWER}+(?:\s+{_UPPER}\.?)*\s+{_UPPER}(?:['’]{_UPPER})?{_LOWER}+")}
# how many: a number that is not a year ("he directed his last movie in 1961" says no count), unless
# what it counts follows it ("about 2000 people")
_NOT_COUNTED = "the|a|an|and|or|to|in|of|on|at|by|for|from|with|as|after|before|until|during|when|there|he|she|it|they|was|were|is"
HAS_TYPE["count"] = re.compile(rf"\b(?!(?:1\d|20)\d\d\b(?!\s+(?!(?:{_NOT_COUNTED})\b)(?-i:[a-z])))\d+(?:[.,]\d+)*|"
                               rf"\b(?:{NUMBER_WORDS})\b", re.I)
# where someone is from: a people's adjective before what they were ("the Swiss psychiatrist", "a
# German orientalist"), or "from" / "of" / "in" a place (not a month or a day)
_DAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
HAS_TYPE["origin"] = re.compile(rf"\b(?:a|an|the)\s+(?:{_UPPER}{_LOWER}+(?:ian|ean|an|ese|ish|ic|i)|Swiss|French|Dutch|"
                                rf"Greek|Thai|Welsh|Irish|Scots?)\s+[a-z]|"
                                rf"\b(?:from|of|in) (?!(?i:{_MONTHS}|{_DAYS})\b){_UPPER}{_LOWER}+")
# a sentence with a date covers "when" (ASKED) without saying "date"; one that says where someone is
# from covers "where ... from" (a sentence that merely says "from" covers the word, not the question)
TYPE_WORDS = {"date": ("date", "year"), "origin": tuple(terms("where from country state nation nationality"))}
AGENT = re.compile(r"\bby ((?:[A-Z][\w'.-]*\s?)+)")  # "was killed ... by Paris": who did what is asked
DEFINITION = re.compile(r"^\s*(?:(?:what|who)(?:'s|\s+is|\s+was|\s+are|\s+were)|tell\s+me\s+about|describe)\s+"
                        r"(?:an?\s+|the\s+)?(?P<name>[^?!]{1,100}?)\s*[?.!]?\s*$", re.I)
# what or who a name is: 孔子是谁？, X是啥 (not a description's "被称为诗仙的是谁？")
ZH_WHAT_IS = re.compile(r"(?<!的)是(?:什么|什麼|谁|誰|啥)(?:人|东西|東西)?[啊呀吗嗎呢]?[\s？?！!。.]*$")
STANDS_FOR = re.compile(r"\b(?:stands?|short|abbreviat\w*|acronym|mean|means)\b|代表什[么麼]|全[称稱]|[缩縮][写寫]", re.I)
ACRONYM = re.compile(r"\b[A-Z][A-Za-z]?[A-Z]{1,6}\b")
SKIPPABLE = {"of", "and", "for", "the", "de", "la", "des", "du", "in", "on", "to", "a", "&"}
# A Chinese follow-up opens with its pronoun ("它的面积是多少？", "那他的妻子呢？"); inside a question the
# character is mostly part of a word (吉他 "guitar", 其他 / 其它 "other", 他人 "others")
_ZH_PRONOUN = r"^[\s，,]*(?:那么|那|请问|还有)?[\s，,]*(?:{})(?![人乡国者])"
ZH_LEAD = re.compile(_ZH_PRONOUN.format("它们|他们|她们|它|他|她|那么|那"))  # what asked() leaves out
ZH_PRONOUN_AT = re.compile(_ZH_PRONOUN.format("(它们|他们|她们|它|他|她)"))  # its pronoun, to put a name in
# "and ...?" in Chinese: 那核心呢？ (after the sun's surface temperature), 还有它的面积？ - about the last entity
ZH_AND_WHAT = re.compile(r"^[\s，,]*(?:那么|那|还有|還有)|呢[\s？?！!。]*$")
# what is left of a follow-up that names another entity and asks nothing else: 那德国呢？, 德国呢,
# "and Zimbabwe?", "so what about the UK?" (it asks the last question of that entity: Linker.asked_again);
# an "and" / "what about" / 那 before it or a 呢 after it: a name alone may be a question of its own
_ALSO = r"(?:(?:so|ok|okay|well)[\s,]+)?(?:and\s+what\s+about|what\s+about|how\s+about|and|那么|那麼|那|还有|還有)"
ELLIPTICAL = re.compile(rf"^[\s,，]*{_ALSO}[\s,，]*(?:the\s+)?\s*(?:'s|的)?\s*(?:呢)?[\s?？!！。]*$"
                        r"|^[\s,，]*(?:的)?\s*呢[\s?？!！。]*$", re.I)
PERSON_PRONOUNS = re.compile(r"\b(?:he|his|him|she|her)\b|" + _ZH_PRONOUN.format("他|她"), re.I)
PRONOUNS = re.compile(r"\b(?:it|its|they|their|them|he|his|him|she|her|this|that|there)\b|"
                      + _ZH_PRONOUN.format("它|他|她"), re.I)
# found in a question as they are, before it is split into words: Chinese words, English phrases
ASKED_PHRASES = sorted((w for w in ASKED if re.match(f"[{CJK}]", w) or " " in w), key=len, reverse=True)
TELL = re.compile(r"\b(?:tell|describe|explain|talk)\b|介绍|说说|谈谈|讲讲", re.I)


# what people put before a question in a conversation ("and when did he die", "wait, is he ...?",
# "ok and who made it?"): the question's form (when / who / is ...) is read after it
_FILLER = r"(?:and|so|but|then|ok|okay|wait|hey|oh|also|um+|uh|hmm+)\b"
_SEPARATORS = "[\\s,.:;!?–—-]*"
# ... and one that says it asks about something else ("unrelated, but ...", "different topic - ...",
# "switching subjects, ..."), said as an aside (not "unrelated to his work, ..."): nothing is carried
# from the conversation (linking.carried)
_SWITCH = (r"(?:unrelated|random (?:q|question)|(?:a )?different (?:topic|subject|question)|"
           r"(?:switching|changing|new|another) (?:the )?(?:topics?|subjects?)(?: a bit)?|on another note)"
           r"\s*(?:[,:;.!?–—-]|but\b)")
NEW_TOPIC = re.compile(rf"^(?:{_FILLER}{_SEPARATORS})*{_SWITCH}", re.I)
LEAD_IN = re.compile(rf"^(?:(?:{_FILLER}|{_SWITCH}){_SEPARATORS})+", re.I)


# what people say to a chatbot that asks the articles nothing: greetings, thanks, goodbyes, questions
# to the bot itself. Answered from Wikipedia, "Hello! How are you today?" got "The articles I have do
# not answer this. The closest I found (Apollo 11): Nixon: Hello, Neil and Buzz."
SOCIAL = re.compile(r"\b(?:hi|hiya|hello|hey|howdy|yo|greetings|good (?:morning|afternoon|evening|night|day)|morning|"
                    r"how (?:are|r) (?:you|u)(?: doing)?|how(?:'s| is) it going|what'?s up|sup|nice to meet you|"
                    r"thanks?(?: you)?|thx|ty|cheers|bye|goodbye|see (?:you|ya)(?: later)?|good ?bye|ok(?:ay)?|"
                    r"cool|great|nice|who are you|what are you|what(?:'s| is) your name|what can you do)\b|"
                    r"你好|您好|嗨|谢谢|再见|早上好|晚上好|你是谁|你叫什么名字?", re.I)
SOCIAL_FILLER = {"there", "again", "so", "much", "very", "today", "you", "all", "everyone", "friend", "bot", "and",
                 "a", "lot", "oh", "well", "then", "too", "for", "that", "the", "help", "your"}


def small_talk(message: str) -> bool:
    """Whether a message is only greetings, thanks and the like (SOCIAL): the model alone answers it,
    not the articles. "Hello! How are you today?" is; "Hello, what is the capital of Andorra?" not."""
    if len(message) > 80:
        return False
    rest = SOCIAL.sub(" ", message.lower())
    return bool(SOCIAL.search(message.lower())) and set(re.findall(r"[^\W\d_]+", rest)) <= SOCIAL_FILLER


def without_lead_in(question: str) -> str:
    """The question with its conversational lead-in blanked: 'and when did he die' -> '    when
    did he die' (spaces: the positions of the names in it stay where linking found them)."""
    blanked = LEAD_IN.sub(lambda m: " " * len(m[0]), question)
    return blanked if blanked.strip() else question  # "so?" is all lead-in: read as it is


def without_zh_question_words(text: str) -> str:
    """A Chinese question without its lead-in pronoun and its question words (ZH_QUESTION_WORDS)."""
    text = ZH_LEAD.sub(" ", text.lstrip())
    for word in ZH_QUESTION_WORDS:
        text = text.replace(word, " ")
    return text


def table_phrases(text: str) -> tuple[list[str], str]:
    """The table's phrases a lower-cased text holds, the longest first ("货币代码" before "货币"):
    Chinese words as they are, English ones as whole words ("real name", not in "surreal
    name"); and the text without them."""
    found = []
    for phrase, pattern in PHRASE_PATTERNS:
        if pattern.search(text):
            found.append(phrase)
            text = pattern.sub(" ", text)
    return found, text


PHRASE_PATTERNS = [(phrase, re.compile(re.escape(phrase) if re.match(f"[{CJK}]", phrase) else rf"\b{re.escape(phrase)}\b"))
                   for phrase in ASKED_PHRASES]  # compiled once: re's own cache holds 512 and a question uses more


GENERIC = {"date", "year", "place", "location"}  # table words nearly every passage answers to


def table_words(asks: str) -> list[str]:
    """The table's words (ASKED) for what a question asks (its words without the entity it
    names), to search with as well: "when did the us buy alaska" finds the passage that says
    "purchased", which its own words miss among the article's many. Not a date or a place
    (nearly every passage has one), nor a word the question says already (it would count twice)."""
    phrases, rest = table_phrases(asks.lower())
    own = set(terms(asks))
    out = []
    for word in dict.fromkeys(phrases + re.findall(r"[^\W\d_]+", rest)):
        extra = [w for w in ASKED.get(word, "").split() if w not in GENERIC and not set(terms(w)) <= own]
        out += [" ".join(extra)] if extra else []
    return out


def has_new(kind: str, text: str, known: set) -> bool:
    """Whether a text holds an answer of the type asked (ANSWER_TYPES) that the question does not
    already say: "Who commanded Apollo 8?" is not answered by a sentence whose only name is
    "Apollo Command Module" (every word of it asked or named)."""
    return any(set(terms(m[0])) - known or not terms(m[0]) for m in HAS_TYPE[kind].finditer(text))


def typed_distance(kind: str, text: str, wanted: set, known: set) -> int:
    """How many words lie between a number or date the question does not say and the nearest word
    of what it asks ('how many provinces': 1 in "Algeria is divided into 48 provinces"; a
    sentence holding an unrelated year far from them ranks after it). For people, a name after
    "by" ("killed ... by Paris": a capitalised pair alone is too loose a sign of a name to measure
    from, and "Achilles killed Troilus" names who was killed, not who did it). 99 when there is none."""
    if kind not in MEASURED_TYPES:
        return 99
    words = list(re.finditer(r"[^\W_]+", text))
    starts = [w.start() for w in words]
    asked_at = [i for i, w in enumerate(words) if set(terms(w[0])) & wanted]
    answers = (m for m in HAS_TYPE[kind].finditer(text)) if kind != "person" else AGENT.finditer(text)
    found = [bisect_right(starts, m.start(m.lastindex or 0)) - 1 for m in answers  # the word it starts in
             if set(terms(m[m.lastindex or 0])) - known or not terms(m[0])]
    if not asked_at or not found:
        return 99

    def nearest(i):  # to word i from the asked word nearest it: one of its two neighbours in asked_at
        j = bisect_left(asked_at, i)
        return min(abs(i - asked_at[k]) for k in (j - 1, j) if 0 <= k < len(asked_at))
    return min(map(nearest, found))


def spelled_out(acronym: str, text: str, max_words: int = 10) -> list[tuple[str, bool]]:
    """Runs of words of `text` whose beginnings spell `acronym` in order (each word giving one
    or more of its first letters; "of", "and", "the" may be skipped), starting with a word of its
    first letter: (the run, whether the acronym stands beside it in brackets). A run elsewhere
    counts only when its words are capitalised ("lunar material" does not spell out LM)."""
    letters = acronym.lower()
    words = list(re.finditer(r"[^\W\d_]+", text))

    def match(i, at):  # the end of a run from words[i] that spells letters[at:], or None
        if at == len(letters):
            return i
        if i >= len(words) or i - start >= max_words:
            return None
        w = words[i][0].lower()
        for n in range(min(len(w), len(letters) - at), 0, -1):
            if w[:n] == letters[at:at + n] and (end := match(i + 1, at + n)) is not None:
                return end
        return match(i + 1, at) if w in SKIPPABLE and at else None

    out = []
    for start in range(len(words)):
        if words[start][0][0].lower() == letters[0] and words[start][0] != acronym:
            end = match(start, 0)
            if end is not None and end - start >= 2:
                a, b = words[start].start(), words[end - 1].end()
                beside = bool(re.match(rf"\s*\(\s*{re.escape(acronym)}\b", text[b:]) or
                              re.search(rf"\b{re.escape(acronym)}\s*\(\s*$", text[:a]))
                if beside or all(w[0][0].isupper() for w in words[start:end] if w[0].lower() not in SKIPPABLE):
                    out.append((text[a:b], beside))
    out += [(name, True) for name in named_beside(acronym, text)]
    return sorted(dict.fromkeys(out), key=lambda x: not x[1])[:3]


def named_beside(acronym: str, text: str) -> list[str]:
    """The capitalised name just before "(ACRONYM" whose capitalised words begin with the
    acronym's letters in another order, all of them or all but one: a name translated from
    another language keeps its letters, not their order ("Coordinated Universal Time (UTC)",
    "National Union for the Total Independence of Angola (UNITA)", "Armed Forces for the
    Liberation of Angola (FAPLA)": Forcas Armadas Populares ...; but of three or four letters,
    all: "Weather Office of the Valley (OMV" is no "Office of the Valley"). Of several, the longest."""
    letters = Counter(c for c in acronym.lower() if c.isalpha())
    needed = max(2, sum(letters.values()) - (sum(letters.values()) >= 5))
    out = []
    for m in re.finditer(rf"\(\s*{re.escape(acronym)}\b", text):
        run = []  # the words before the bracket, back to one neither capitalised nor skippable
        for word in reversed(text[max(0, m.start() - 200):m.start()].split()):
            if not re.fullmatch(r"[^\W\d_][\w'’-]*", word) or not (word[0].isupper() or word in SKIPPABLE):
                break
            run.insert(0, word)
        best = None
        for start in range(len(run)):
            capitals = [w[0].lower() for w in run[start:] if w[0].isupper()]
            if run[start][0].isupper() and len(capitals) >= needed and \
                    not Counter(capitals) - letters:
                best = " ".join(run[start:])
                break  # the earliest start that fits is the longest
        if best:
            out.append(best)
    return out


# ----------------------------------------------------------------------------------------
# The kind of a question, as the confidence is calibrated per kind (ranker.Confidence): on the
# natural dev split one threshold over all kinds declined 59 % of "who did it" questions whose best
# evidence was right (their confidences run lower, and so do their wrong answers' ones)

# "the largest", "the first" (not any word ending in -est: "Bucharest", "protest", "forest")
SUPERLATIVE = re.compile(r"\b(?:most|least|first|last|best|worst|(?:larg|small|bigg|high|low|long|short|old|young|"
                         r"tall|great|deep|near|far|earli|lat|fast|rich|poor|heavi|light|hott|cold|wid|narrow|"
                         r"strong|weak|clos|bright|dens|rar|common|new|easi|busi|wealthi)est)\b", re.I)
QUESTION_KINDS = ("follow-up", "named nothing", "yes/no", "stands for", "what is", "reverse", "superlative") + \
    tuple(name for name, _ in ANSWER_TYPES) + ("other",)


def question_kind(question: str, follow_up: bool, linked: bool, best_kind: str) -> str:
    """One of QUESTION_KINDS: a turn after others first, then one that names nothing the graph
    knows, then the question's form (read after its lead-in), then "reverse" when the best
    evidence is a fact read backwards, then the type of answer asked (ANSWER_TYPES)."""
    form = without_lead_in(question)
    if follow_up:
        return "follow-up"
    if not linked:
        return "named nothing"
    if asks_yes_or_no(form):
        return "yes/no"
    if STANDS_FOR.search(form):
        return "stands for"
    if DEFINITION.match(form):
        return "what is"  # "What is X?", "Who was X?", "What is the capital of X?"
    if best_kind == "reverse":
        return "reverse"
    if SUPERLATIVE.search(form):
        return "superlative"
    return answer_type(form) or "other"


def answer_type(form: str) -> str:
    """The type of answer a question (read after its lead-in) asks for (ANSWER_TYPES), or ""."""
    return next((name for name, pattern in ANSWER_TYPES if pattern.search(form)), "")
