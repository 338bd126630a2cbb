"""Questions asked in Chinese as people ask them: simplified or traditional characters, "where was
he born", "how tall", follow-ups that say 它 / 他, on a small Chinese dataset (a new Chinese user's
walkthrough found each of these declined or answered with the wrong field)."""
import pytest
from conftest import dump_xml, page

from prepare_wiki import main as prepare
from wikigpt.knowledge.evidence import Reader
from wikigpt.knowledge.analysis import terms
from wikigpt.knowledge.natural import holds
from wikigpt.knowledge.qa_items import calibrate
from wikigpt.knowledge.retrieval import add_index_info, build_index

FILLER = "。".join(f"{w}是一个常见的词语，在很多文章里都会出现" for w in "山水风云花草树木") + "。"
PAGES = [
    ("北京市", "{{Infobox settlement |population_total = 21893095 |area_total_km2 = 16410.54 |leader_name = 殷勇 "
            "|leader_title = 市长}}'''北京市'''是中华人民共和国的首都，历史悠久。" + FILLER * 3),
    ("香港", "{{Infobox settlement |currency = [[港元]] |population_total = 7413070}}'''香港'''位於南海北岸、珠江口東側。"
           + FILLER * 3),
    ("爱因斯坦", "{{Infobox scientist |birth_date = {{birth date|1879|3|14}} |birth_place = [[乌尔姆]] "
             "|death_date = {{death date|1955|4|18}} |awards = [[诺贝尔物理学奖]]}}'''爱因斯坦'''是出生于德国的理论物理学家，创立了相对论。"
             "他创立了[[广义相对论]]，获得了[[诺贝尔物理学奖]]。" + FILLER * 3),
    ("上海市", "{{Infobox settlement |population_total = 24870895}}'''上海市'''是中国的直辖市，位于长江入海口。" + FILLER * 3),
    ("臺北市", "{{Infobox settlement |population_total = 2510000}}'''臺北市'''是臺灣的直轄市。" + FILLER * 3),
    ("大熊猫", "'''大熊猫'''是中国特有的熊科动物。\n\n" + FILLER + "\n\n== 习性 ==\n大熊猫虽属食肉目，但其食物的99%是竹子。"
            "\n\n流行说法认为大熊猫会冬眠，但这一说法是错误的。\n\n== 保护 ==\n第四次调查的结果：野生大熊猫数量为1,864只。\n\n"
            + FILLER * 2),
    ("太阳", "{{Infobox planet |radius = 696,340 km |age = 约46亿年 |mass = 1.989×10³⁰ kg}}'''太阳'''是太阳系的中心天体。\n\n" + FILLER + "\n\n== 结构 ==\n太阳的可见表面称为光球，温度约为5,772K。太阳的核心温度约为1,570万K。太阳是一颗恒星，任何探测器都无法在其表面着陆。"
           "\n\n" + FILLER + "\n\n== 形成 ==\n约46亿年前，一团分子云在引力作用下坍缩，形成了太阳。\n\n" + FILLER),
    ("长城", "'''长城'''是中国古代的军事防御工程。\n\n" + FILLER + "\n\n== 历史 ==\n明朝对长城进行了大规模的修建。中国有一种说法认为长城在月球上也能看到。"
           "2009年，国家文物局公布明长城的总长度为8,851.8公里。1987年，长城被列为世界遗产。\n\n" + FILLER * 2),
    ("脱氧核糖核酸", "'''脱氧核糖核酸'''（缩写为'''DNA'''）是一种生物大分子，携带遗传信息。\n\n" + FILLER +
               "\n\n== 历史 ==\n1953年，詹姆斯·沃森和弗朗西斯·克里克发表了DNA双螺旋结构模型。\n\n" + FILLER * 2),
    ("黄河", "'''黄河'''是中国北方的大河。\n\n" + FILLER + "\n\n== 概况 ==\n黄河是中国第二长河，也是世界第六长河。"
           "黄河是世界上含沙量最大的河流。\n\n" + FILLER * 2),
    ("东京晴空塔", "'''东京晴空塔'''位于日本东京墨田区。\n\n" + FILLER + "\n\n== 概要 ==\n东京晴空塔高634米，2012年启用，"
              "是世界上最高的电波塔。\n\n" + FILLER * 2),
    ("珠穆朗玛峰", "{{Infobox mountain |elevation_m = 8848.86}}'''珠穆朗玛峰'''是喜马拉雅山脉的主峰。\n\n" + FILLER +
               "\n\n== 比较 ==\n珠穆朗玛峰比乔戈里峰高约237米。\n\n" + FILLER * 2),
] + [(f"话题{i}", f"'''话题{i}'''是一个话题。" + FILLER * 3) for i in range(6)]


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    root = tmp_path_factory.mktemp("zh")
    (root / "dump.xml").write_text(dump_xml(*(page(t, text) for t, text in PAGES)), encoding="utf-8")
    prepare([str(root / "dump.xml"), "--out", str(root / "data"), "--tokenizer", "bpe:400", "--min_chars", "50",
             "--val_fraction", "0.1", "--workers", "1"])
    build_index(root / "data", quiet=True)
    add_index_info(root / "data", calibrate(root / "data", Reader.open(root / "data")))
    return Reader.open(root / "data")


@pytest.mark.parametrize("question, attribute, text", [
    ("香港的货币是什么？", "currency", "港元"),
    ("香港的貨幣是什麼？", "currency", "港元"),  # traditional: 貨幣 and 什麼 were words the evidence had to hold
    ("爱因斯坦出生于哪里？", "birth place", "乌尔姆"),  # not his birth date (出生 covers both; 哪里 asks a place)
    ("爱因斯坦的出生地是哪里？", "birth place", "乌尔姆"),
    ("爱因斯坦是什么时候出生的？", "birth date", "1879年3月14日"),
    ("珠穆朗玛峰有多高？", "elevation", "8848.86 m"),
])
def test_everyday_chinese_questions_are_answered_from_the_field_they_ask(reader, question, attribute, text):
    found = reader.find(question)
    assert found.answerable and (found.best.attribute, found.best.text) == (attribute, text), found.items[:3]


@pytest.mark.parametrize("follow_up, attribute", [("它的面积是多少？", "area total"), ("那它的面积呢？", "area total"),
                                                  ("它的人口呢？", "population total")])
def test_a_follow_up_that_says_it_is_about_the_last_questions_entity(reader, follow_up, attribute):
    first = reader.find("北京市的市长是谁？")
    assert first.answerable and first.best.text == "殷勇"
    found = reader.find(follow_up, history=["北京市的市长是谁？", first.best.quoted])
    assert found.answerable and found.best.title == "北京市" and found.best.attribute == attribute, found.items[:3]


def test_a_pronoun_opens_a_follow_up_and_the_same_character_inside_a_word_is_none():
    from wikigpt.knowledge.questions import PERSON_PRONOUNS, PRONOUNS
    assert PRONOUNS.search("它的面积是多少？") and PERSON_PRONOUNS.search("他是哪一年去世的？")
    assert PERSON_PRONOUNS.search("那他的妻子呢？") and PRONOUNS.search("请问，它的人口呢？")
    for word in ("还有其他城市吗？", "其它国家呢？", "吉他是什么？", "他人是什么意思？"):  # other, guitar, others
        assert not PRONOUNS.search(word), word
    assert PRONOUNS.search("When was it published?") and not PRONOUNS.search("Whitman")


def test_a_question_about_a_guitar_after_a_city_is_not_about_the_city(reader):
    """吉他 ("guitar") holds 他: read as "he", the question carried 北京市 (a review)."""
    first = reader.find("北京市的市长是谁？")
    found = reader.find("吉他是什么？", history=["北京市的市长是谁？", first.best.quoted])
    assert all(link.subject != first.links[0].subject for link in found.links), found.links


def test_a_city_is_named_without_its_rank(reader):
    """上海 for 上海市: zhwiki's title says the rank, people do not ("names nothing the graph knows")."""
    found = reader.find("上海的人口是多少？")
    assert found.links and found.links[0].title == "上海市" and found.best.text == "24870895", found.items[:3]


@pytest.mark.parametrize("question, title, text", [
    ("台北市的人口是多少？", "臺北市", "2510000"),  # the title in traditional characters, the question in simplified
    ("台北的人口是多少？", "臺北市", "2510000"),  # and without its rank
    ("愛因斯坦出生於哪裡？", "爱因斯坦", "乌尔姆"),  # the title in simplified, the question in traditional
])
def test_a_name_is_linked_in_either_script(reader, question, title, text):
    """zhwiki titles an article in the script its authors wrote; people ask in theirs (臺北市 was
    linked only when asked as 臺北市)."""
    found = reader.find(question)
    assert found.links and found.links[0].title == title and found.best.text == text, (found.links, found.items[:3])


@pytest.mark.parametrize("question, said", [("大熊猫是食肉目的吗？", "是的："), ("大熊貓是食肉目的嗎？", "是的："),
                                            ("大熊猫会冬眠吗？", "不是："),
                                            ("珠穆朗玛峰比乔戈里峰矮吗？", "不是："),  # the sentence says 高 (was 是的)
                                            ("珠穆朗玛峰比乔戈里峰高吗？", "是的："),
                                            # 有没有 / 是不是 hold 没有 / 不是: the question is no negation (was 不是)
                                            ("长城有没有被列为世界遗产？", "是的："), ("大熊猫是不是食肉目的？", "是的："),
                                            ("大熊猫有没有冬眠？", "不是："),
                                            # a "not" that negates something else (无法 ... 着陆) says nothing
                                            ("太阳是一颗恒星吗？", "是的："),
                                            # compared the other way round: 乔戈里峰 is the lower one
                                            ("乔戈里峰比珠穆朗玛峰矮吗？", "是的："), ("乔戈里峰比珠穆朗玛峰高吗？", "不是：")])
def test_a_chinese_yes_or_no_question_is_answered_yes_or_no(reader, question, said):
    """吗 / 是否 ask yes or no as "Is ...?" does in English: the evidence that settles it, after 是的 or
    不是 (a sentence that calls the claim wrong says no); before, only English questions were read so."""
    found = reader.find(question)
    assert found.answerable and found.best.quoted.startswith(said), found.items[:3]
    assert holds(found.best.quoted, ["yes" if said == "是的：" else "no"])
    assert not holds(found.best.quoted, ["no" if said == "是的：" else "yes"])


def test_a_question_word_before_ma_asks_for_the_thing_not_yes_or_no(reader):
    found = reader.find("你知道北京市的市长是谁吗？")
    assert found.answerable and found.best.text == "殷勇", found.items[:3]
    told = reader.find("你知道大熊猫吗？")  # "do you know ...?": tell me about it (was "not found", 0.6)
    assert told.best.kind == "lead" and told.best.title == "大熊猫" and told.score > 0.9, told.items[:3]


def test_an_acronym_inside_a_chinese_question_is_not_asked_to_be_spelled_out(reader):
    """"DNA双螺旋结构是谁发现的？" was answered 脱氧核糖核酸 (what DNA stands for): a question of one
    "word" by its spaces; "DNA的全称是什么？" does ask it."""
    found = reader.find("DNA双螺旋结构是谁发现的？")
    assert "沃森" in found.best.quoted, found.items[:3]
    spelled = reader.find("DNA的全称是什么？")
    assert spelled.answerable and spelled.best.text == "脱氧核糖核酸", spelled.items[:3]


@pytest.mark.parametrize("question", ["What is 诺贝尔物理学奖?", "诺贝尔物理学奖是什么？", "Tell me about 诺贝尔物理学奖."])
def test_what_a_name_is_is_not_answered_by_a_fact_that_names_it(reader, question):
    """诺贝尔物理学奖 has no article, only 爱因斯坦's award names it: "who won it" is no answer to what it
    is (the graph read backwards answered it at 0.90, and such questions set the Chinese sample's
    threshold at 0.95)."""
    found = reader.find(question)
    assert not found.answerable and all(i.kind != "reverse" for i in found.items), found.items[:3]


@pytest.mark.parametrize("question, text", [
    ("明长城有多长？", "8,851.8公里"),  # 多长: a sentence says 长度, not the field name "length"
    ("太阳表面温度是多少？", "5,772K"),  # 面温, a pair across two words no passage holds, weighed most
    ("長城是哪一年被列為世界遺產的？", "1987年"),  # a year asked: a sentence with one covers "year"
    ("野生大熊貓還有多少隻？", "1,864只"),  # 还有多少: how many are left (還有 in traditional)
])
def test_a_chinese_sentence_answers_the_number_or_date_asked(reader, question, text):
    """Chinese answers in sentences scored under the threshold: the question's "how long", "which
    year" and "how many" were read as words to find, where English reads them as the type of
    answer asked (ANSWER_TYPES)."""
    found = reader.find(question)
    assert found.answerable and text in found.best.text, found.items[:3]


@pytest.mark.parametrize("question, title", [("大熊猫是啥？", "大熊猫"),  # 啥: "what" as people type it (0.5)
                                             ("爱因斯坦是干嘛的", "爱因斯坦")])  # what does he do: who is he (0.5)
def test_an_everyday_what_is_asks_for_the_lead(reader, question, title):
    found = reader.find(question)
    assert found.answerable and found.best.kind == "lead" and found.best.title == title, found.items[:3]


def test_how_asks_for_the_section(reader):
    how = reader.find("太阳是怎么形成的？")  # 怎么: "how", no word the section says
    assert how.answerable and how.best.attribute == "形成" and how.score >= 0.95, how.items[:3]


@pytest.mark.parametrize("question", ["法国是什么？", "澳大利亚的首都是哪里？", "莎士比亚写过哪些剧本？"])
def test_a_chinese_name_the_corpus_lacks_is_not_found(reader, question):
    """The pairs of characters no passage holds are dropped only beside a pair that one does (a
    word boundary): 法国 itself, unseen, is what is asked."""
    found = reader.find(question)
    assert not found.answerable and found.score < 0.6, found.items[:3]  # 0.80 with 法国 dropped: 法 and 国 seen


def test_and_what_about_in_chinese_carries_the_last_entity(reader):
    """那核心呢？ ("and the core?") names no pronoun and a word the conversation has not said: it was
    read as a new subject (as 吉他是什么？ is) and carried nothing."""
    first = reader.find("太阳表面温度是多少？")
    found = reader.find("那核心呢？", history=["太阳表面温度是多少？", first.best.quoted])
    assert found.links and found.links[0].title == "太阳" and "1,570万K" in found.best.text, found.items[:3]
    other = reader.find("韩国的人口呢？", history=["北京的人口是多少？", "21893095"])  # another country: not Beijing
    assert all(link.title != "北京市" for link in other.links) and not other.answerable, other.items[:3]


@pytest.mark.parametrize("question, text", [
    ("北京市的市长叫什么？", "殷勇"),  # 叫什么: "what is it called" (叫 was asked, as a word no field says)
    ("北京的人口是多少啊", "21893095"),  # a last particle
    ("有人知道北京市的市长是谁吗", "殷勇"),  # "does anyone know ...": who, not yes or no
    ("爱因斯坦啥时候出生的", "1879年3月14日"),  # 啥时候: when
])
def test_colloquial_chinese_forms_ask_what_their_plain_forms_ask(reader, question, text):
    found = reader.find(question)
    assert found.answerable and found.best.text == text, found.items[:3]


def test_an_area_asked_how_big_is_the_area(reader):
    first = reader.find("北京的人口是多少？")
    found = reader.find("那面积有多大？", history=["北京的人口是多少？", first.best.quoted])
    assert found.answerable and found.best.attribute == "area total", found.items[:3]  # 多大 was asked as a word


@pytest.mark.parametrize("question, title", [("世界上最高的电波塔是哪个？", "东京晴空塔"),
                                             ("世界上含沙量最大的河流是哪条？", "黄河")])
def test_a_chinese_question_that_describes_what_it_asks_about_finds_the_sentence_that_says_so(reader, question, title):
    """世界上最高的电波塔是哪个？ names nothing (Chinese describes where English would write a name):
    the sentence that writes the description was scored as about nothing (0.80, under the threshold)."""
    found = reader.find(question)
    assert found.answerable and found.best.title == title, found.items[:3]


@pytest.mark.parametrize("question", ["世界第二长河是哪条？",  # "中国第二长河 ... 世界第六长河": most, not all of it
                                      "世界上含沙量最小的河流是哪条？"])  # "含沙量最大": 最 says another thing
def test_a_sentence_that_writes_a_description_only_in_part_is_not_about_it(reader, question):
    found = reader.find(question)
    assert not found.answerable, found.items[:3]


def test_a_name_only_mentioned_is_no_answer_to_who_it_is(reader):
    """弗朗西斯·克里克 has no article: the sentence that mentions him says nothing of who he is."""
    found = reader.find("弗朗西斯·克里克是谁？")
    assert not found.answerable, found.items[:3]


def test_a_comparison_is_settled_only_by_a_sentence_that_makes_it(reader):
    """珠穆朗玛峰比喜马拉雅山脉长吗？: the lead covers its words but compares nothing."""
    found = reader.find("珠穆朗玛峰比喜马拉雅山脉长吗？")
    assert not found.answerable and found.best.kind != "yes/no", found.items[:3]


def test_yes_or_no_is_read_in_each_language():
    from wikigpt.knowledge.yes_no import asks_yes_or_no, says_no
    assert asks_yes_or_no("光合作用是地球上几乎所有生命的能量来源吗？")  # 几乎 "almost" asks no number
    assert not asks_yes_or_no("长江有几个支流吗？")
    assert says_no("The aardvark is not closely related to the pig.", set())  # English evidence, read as English
    assert not says_no("黑洞是引力极强的区域，任何物质都无法从中逃脱。", set(terms("引力 极强 区域")))


def test_a_description_is_written_with_its_superlative_and_ordinal():
    from wikigpt.knowledge.evidence import says_most_of, zh_description
    sentence = "黄河是世界上含沙量最大的河流，也是世界第六长河。"
    assert zh_description("世界上含沙量最大的河流是哪条？") == ["世界上含沙量最大", "河流"]
    assert says_most_of(zh_description("世界上含沙量最大的河流是哪条？"), sentence)
    assert not says_most_of(zh_description("世界上含沙量最小的河流是哪条？"), sentence)  # 最大 is no 最小
    assert not says_most_of(zh_description("世界第二长河是哪条？"), sentence)  # 第六 is no 第二
    assert not says_most_of(zh_description("What is the largest river?"), sentence)  # English: no description


@pytest.mark.parametrize("plain, hedged", [
    ("明长城的总长度是多少？", "明长城的总长度大概是多少？"),  # "roughly": no word of what is asked
    ("野生大熊猫数量是多少？", "野生大熊猫数量一共是多少？"),  # "in all"
    ("太阳的核心温度是多少？", "太阳的核心温度到底是多少？"),  # "on earth"
    ("大熊猫吃什么？", "大熊猫吃什么东西？"),  # "what thing": 东西 is the question's word, not the sentence's
])
def test_hedges_and_fillers_are_not_read_as_asked(reader, plain, hedged):
    """大概, 一共, 到底 ... weighed as the rarest words asked (a Wikipedia sentence rarely writes them):
    the sentence that answers scored under the threshold."""
    def asked(question):
        return set(reader.asked(question, reader.links(question)).weights)
    assert asked(hedged) == asked(plain)
    assert reader.find(hedged).best.text == reader.find(plain).best.text


def test_later_and_to_where_are_no_words_of_what_is_asked():
    from wikigpt.knowledge.questions import without_zh_question_words
    assert without_zh_question_words("他后来被流放到哪里？").split() == ["被流放"]  # 李白被流放夜郎
    assert without_zh_question_words("长城一共有多长").split() == ["长城", "多长"]  # (多长: a length, ASKED)


def test_what_something_is_said_to_be_is_read_by_the_words_sentences_use_and_what_it_is_called_asks_its_name(reader):
    called = reader.asked("被称为诗仙的是谁？", [])  # the sentence says 被后人誉为“诗仙”
    assert any({"称为", "誉为"} <= covers for covers in called.covers.values()), called.covers
    for question in ("北京市的人口叫做什么？", "香港的货币叫做什么？"):  # what its name is: the field, not 称为
        found = reader.find(question)
        assert found.answerable and found.best.kind == "fact", found.items[:3]


def test_a_follow_up_that_names_another_entity_and_asks_nothing_else_asks_the_last_question_of_it(reader):
    """那上海市呢？ after 北京市的人口是多少？ asks Shanghai's population (it was answered with Shanghai's
    lead); "and 上海市?" the same in English; a follow-up that asks its own question is read as it is."""
    first = reader.find("北京市的人口是多少？")
    assert first.answerable and first.best.text == "21893095"
    history = ["北京市的人口是多少？", first.best.quoted]
    for follow_up in ("那上海市呢？", "上海市呢", "那么上海市的呢？"):
        found = reader.find(follow_up, history=history)
        assert found.answerable and (found.best.title, found.best.text) == ("上海市", "24870895"), found.items[:3]
    assert reader.linker.asked_again("and 上海市?", ["What is the population of 北京市?", "21893095"]) == \
        "What is the population of 上海市?"
    for own in ("上海市是什么？", "上海市的面积呢？", "Who is 上海市?", "那北京市呢？", "上海市"):  # its own question; the
        assert reader.linker.asked_again(own, history) == own  # same entity; a name alone (a question of its own)
    assert reader.linker.asked_again("so what about the 上海市?", history) == "上海市的人口是多少？"
    assert reader.linker.asked_again("那麼上海市呢", history) == "上海市的人口是多少？"  # traditional 那麼
    after = history + ["那上海市呢？", "24870895"]  # one after another: the question as it was read
    assert reader.linker.asked_again("那臺北市呢？", after) == "臺北市的人口是多少？"
    carried = history + ["它的面积是多少？", "16410.54 km²"]  # its entity carried by 它: the name in its place
    assert reader.linker.asked_again("那上海市呢？", carried) == "上海市的面积是多少？"
    two = ["北京市的人口比上海市多吗？", "是的"]  # a question of two entities: not rewritten
    assert reader.linker.asked_again("那臺北市呢？", two) == "那臺北市呢？"
    found = reader.find("那上海市呢？", history=["What is the population of 北京市?", "21893095"])
    assert found.lang == "zh" and found.best.text == "24870895"  # the reply speaks the user's language


@pytest.mark.parametrize("question, attribute, text", [
    ("太阳的半径是多少？", "radius", "696,340 km"),
    ("太陽的半徑是多少？", "radius", "696,340 km"),
    ("太阳的年龄是多少？", "age", "约46亿年"),
    ("太阳的质量是多少", "mass", "1.989×10³⁰ kg"),
])
def test_fields_zhwiki_names_in_english_are_asked_by_their_chinese_words(reader, question, attribute, text):
    """zhwiki's infoboxes name most fields in English (radius, age, calling_code, MolarMass): 半径, 年龄,
    区号, 摩尔质量 asked of them were declined, the field never read as what was asked."""
    found = reader.find(question)
    assert found.answerable and (found.best.attribute, found.best.text) == (attribute, text), found.items[:3]


def test_an_area_code_is_not_answered_with_a_postal_code():
    """区号 asked "calling code", and "code" alone covered a postal code: 北京市的区号是多少？ was answered 100000."""
    from wikigpt.knowledge.analysis import terms
    from wikigpt.knowledge.questions import ASKED
    assert "code" not in terms(ASKED["区号"]) and "call" in terms(ASKED["电话区号"])
