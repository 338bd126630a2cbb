"""Answers to questions as people ask them (wikigpt/knowledge/evidence.py, natural.py, ranker.py,
conversation.py): reverse look-ups through the graph, acronyms spelled out, yes/no settled by the
evidence or declined, follow-ups that carry the conversation's entity (and a reset that clears
it). Saying "not found" (the threshold, the learned confidence): test_confidence.py."""
import pytest
from conftest import PROSE, dump_xml, page

from prepare_wiki import main as prepare
from wikigpt.chat.chat_template import Message
from wikigpt.knowledge.conversation import find_in_conversation
from wikigpt.knowledge.analysis import _remembered, analyse_terms, query_terms, terms
from wikigpt.knowledge.index_build import analyse
from wikigpt.knowledge.evidence import (DEFAULT_THRESHOLD, MAX_ACRONYMS, UNSETTLED, Item, Reader, names_an_element,
                                        stored_thresholds, unknown_name_asked)
from wikigpt.knowledge.linking import MAX_GUESSED_WORDS
from wikigpt.knowledge.replies import not_found, without_abstention
from wikigpt.knowledge.graph import GUESSED
from wikigpt.knowledge.questions import ASKED, named_beside, table_words
from wikigpt.knowledge.natural import holds
from wikigpt.knowledge.retrieval import Passage, build_index

WRITER = """{{Infobox writer
|name = Mara Quill
|notable_works = [[The Glass Orchard]], [[Salt Roads]]
|birth_date = 3 May 1901
}}
'''Mara Quill''' was a novelist from the northern coast. """
VALLEY = """{{Infobox country
|capital = [[Stonebridge]]
|largest_city = capital
|established_date1 = 1278
}}
'''Brindavale''' is a landlocked valley state in the high mountains. Brindavale is not a member of the European Union.
The Brindavale Standards Office (BSO) keeps the weights and measures of the valley. """
GAZETTE = """'''Stonebridge Gazette''' is a newspaper of the valley. Its printers published a calendar in the same year.
The gazette was first published in 1852. The valley's rover carries it to the farms. Claims that the gazette is printed abroad are unsupported.
Its first editor was Joseph E. Marlow of the valley. """
WEATHER = """The '''Weather Office of the Valley''' (OMV, from its old name Office Meteo du Val) forecasts the weather of
Brindavale. """
RELATIONS = "The '''foreign relations of Brindavale''' are its ties abroad. Brindavale opened an embassy in Oslo in 1921. "
RELATIONS += "Brindavale is a member of the Union of Mountain States (MSU), named in the order of its French name. "
# a passage that says "purchased", and one with more of the words of "when did the duke buy the copper mines"
MINES = [("Duke of the Valley", "The '''Duke of the Valley''' ruled it. In 1602 the duke purchased the copper mines. "),
         ("Copper Hill", "'''Copper Hill''' is a hill. The duke's copper mines there were the deepest copper mines, and "
                         "the duke visited the mines often. ")]
FILLER = ["Mountain", "River", "Harbour", "Meadow", "Island", "Desert"]
# two sentences a follow-up scores alike: the conversation tells them apart
ALMANAC = "'''Valley Almanac''' is a yearly book of the valley. The almanac printed a map in 1901. The almanac printed a calendar in 1902. "
ALMANAC += "Its first editor was Tomos Rhys. Rhys was a Welsh engraver. The paper of the almanac came from the mill. "
ALMANAC += "Every village of the valley reads the almanac, except Stonehollow. "


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    root = tmp_path_factory.mktemp("answers")
    pages = [page("Mara Quill", WRITER + PROSE * 2), page("Brindavale", VALLEY + PROSE * 2),
             page("Stonebridge Gazette", GAZETTE + PROSE * 2), page("Weather Office of the Valley", WEATHER + PROSE * 2)]
    pages += [page(t, f"'''{t}''' is a [[{t.lower()}]] of the old country. " + PROSE * 2) for t in FILLER]
    pages.append(page("Foreign relations of Brindavale", RELATIONS + PROSE * 2))
    pages.append(page("Valley Almanac", ALMANAC + PROSE * 2))
    pages += [page(title, text + PROSE) for title, text in MINES]
    (root / "dump.xml").write_text(dump_xml(*pages), encoding="utf-8")
    prepare([str(root / "dump.xml"), "--out", str(root / "data"), "--tokenizer", "bpe:400", "--min_chars", "50",
             "--val_fraction", "0.1", "--workers", "1"])
    build_index(root / "data", quiet=True)
    return Reader.open(root / "data")


def test_a_sentence_that_opens_with_a_pronoun_is_quoted_after_its_articles_title(reader, tiny_data):
    """"Its first editor was Joseph E. Marlow" answers "Which paper did Joseph E. Marlow edit first?"
    only with the paper named: the reply (copied, or judged by the benchmark) says it first."""
    from wikigpt.decoding.sampling import SamplingParams
    from wikigpt.knowledge.grounding import copy_plan
    from wikigpt.prep.data import load_dataset

    found = reader.find("Which paper did Joseph E. Marlow edit first?")
    assert found.best.text.startswith("Its first editor was Joseph E. Marlow")
    assert found.best.quoted == f"Stonebridge Gazette: {found.best.text}" and holds(found.best.quoted, ["Stonebridge Gazette"])
    tok = load_dataset(tiny_data).tokenizer
    found.threshold = 0.0  # answered: the copy reads the quoted text back
    _, _, copy = copy_plan(tok, found, SamplingParams(copy=0.5))
    assert tok.decode(copy.ids) == found.best.quoted
    for kind, text in (("sentence", "Hermann Hesse wrote it."), ("fact", "He")):  # no pronoun; not a sentence
        assert Item(kind, "T", text).quoted == text


def test_where_someone_is_from_is_answered_by_where_not_by_the_word_from(reader):
    history = ["Who was the Valley Almanac's first editor?", "Its first editor was Tomos Rhys."]
    assert "Welsh" in reader.find("where was he from?", history=history).best.text


def test_is_x_real_asks_no_birth_name_and_stays_unsettled(reader):
    found = reader.find("Is Mara Quill real?")
    assert not found.answerable and not found.best.text.startswith(("Yes", "No"))


def test_a_one_word_title_typed_with_a_letter_wrong_is_still_linked(reader):
    found = reader.find("What is the capital of Brindavalle?")  # a word no passage uses, one edit from the title
    assert [(l.title, l.kind) for l in found.links] == [("Brindavale", GUESSED)] and found.best.text == "Stonebridge"
    assert found.score <= 0.9  # a guessed name is trusted less than one the question spells
    assert reader.find("Who keeps the rover?").links == []  # the corpus uses "rover" (one edit from River): no typo


def test_a_when_question_is_answered_by_a_date_not_by_the_word_year(reader):
    assert "1852" in reader.find("When was the Stonebridge Gazette first published?").best.text
    assert "1852" in reader.find("When was it published?", history=["What is the Stonebridge Gazette?", ""]).best.text
    # a conversation's lead-in does not hide what is asked ("and when ...": a date, "wait, is ...": yes or no)
    assert "1852" in reader.find("and when was it published?", history=["What is the Stonebridge Gazette?", ""]).best.text
    assert reader.find("wait, is Brindavale landlocked??").best.text.startswith("Yes: ")


def test_when_it_started_or_ended_is_asked_of_an_events_date_span(reader):
    for question in ("When did Brindavale end?", "When did Brindavale start?", "When did it happen in Brindavale?"):
        asked = reader.asked(question, reader.links(question))
        assert asked.coverage(set(terms("date"))) == 1.0, question  # "April 19, 1775 – September 3, 1783"


def test_a_field_name_run_together_is_read_as_its_words(reader):
    assert reader.attribute_words("grainofmill") == "grainofmill grain of mill"  # words of the text
    assert reader.attribute_words("capital") == "capital" and reader.attribute_words("xqzvwkplm") == "xqzvwkplm"
    fact = Item("fact", "Brindavale", "Oats", "grainofmill")
    asked = reader.asked("Which mill grain has Brindavale?", reader.links("Which mill grain has Brindavale?"))
    assert reader.score(fact, asked, {"Brindavale": 0}) > 0.9  # "mill" and "grain" are what its name says


def test_an_entitys_evidence_includes_the_articles_its_own_is_split_into(reader):
    found = reader.find("When did Brindavale open an embassy in Oslo?")
    assert [reader.kb.title(a) for a in reader.linker.related(found.links[0])] == ["Foreign relations of Brindavale"]
    assert "1921" in found.best.text and found.best.title == "Foreign relations of Brindavale"
    assert found.best.score > 0.8  # about the entity asked of (0.9), not about another one (0.5)


def test_an_abbreviation_a_lead_gives_in_brackets_links_and_is_spelled_out_by_the_title(reader):
    found = reader.find("What does OMV stand for?")  # its letters spell no run of words: the title says it
    assert [l.title for l in found.links] == ["Weather Office of the Valley"]
    assert found.best.text == "Weather Office of the Valley" and found.answerable


def test_an_initial_does_not_end_a_sentence_and_unsupported_claims_are_answered_no(reader):
    found = reader.find("Who was the first editor of the Stonebridge Gazette?")
    assert found.best.text == "Its first editor was Joseph E. Marlow of the valley."
    assert reader.find("Is the Stonebridge Gazette printed abroad?").best.text.startswith("No: ")


def test_a_reverse_question_is_answered_by_the_subject_whose_fact_names_it(reader):
    found = reader.find("Who wrote The Glass Orchard?")  # no article of that name: only Mara Quill's works name it
    assert found.best.kind == "reverse" and found.best.title == "Mara Quill"
    assert found.best.text.startswith("Mara Quill (notable works: The Glass Orchard")


def test_a_reverse_look_up_names_an_element_of_the_value_not_a_word_of_it(reader):
    assert names_an_element("Atlas Shrugged", "The Fountainhead, Atlas Shrugged, Anthem")
    assert names_an_element("Yellowhammer State", "The Yellowhammer State, Heart of Dixie")
    assert not names_an_element("Bear", "American black bear")  # "Tell me about Bear." is no reverse look-up
    assert all(i.kind != "reverse" for i in reader.find("Tell me about Orchard.").items)  # of "The Glass Orchard"


def test_a_reply_is_linked_by_its_names_only_never_by_a_guessed_spelling(reader):
    assert reader.links("Brindavle", guess=False) == [] and reader.links("Brindavle")[0].title == "Brindavale"


def test_an_acronym_is_spelled_out_from_the_words_beside_it(reader):
    found = reader.find("What does BSO stand for?")
    assert found.best.kind == "expansion" and found.best.text == "Brindavale Standards Office"
    typed = reader.find("bso stands for what")  # typed in lower case: the passages write it in capitals
    assert typed.best.kind == "expansion" and typed.best.text == "Brindavale Standards Office"
    # a name from another language keeps its letters, not their order: the name beside it in brackets
    other_order = reader.find("What does MSU stand for?")
    assert other_order.best.kind == "expansion" and other_order.best.text == "Union of Mountain States"
    # passages the question's other words did not find: the acronym's own are searched
    assert [i.text for i in reader.expansions("what's MSU short for", [], [])] == ["Union of Mountain States"]
    assert named_beside("UNITA", "and the National Union for the Total Independence of Angola (UNITA) in") == \
        ["National Union for the Total Independence of Angola"]
    assert named_beside("FAPLA", "succeeded the Armed Forces for the Liberation of Angola (FAPLA)") == \
        ["Armed Forces for the Liberation of Angola"]  # all of its letters but one
    assert named_beside("NATO", "In Brussels the Treaty (NATO) was signed") == []  # not its letters
    assert named_beside("UTC", "the basis for Coordinated Universal Time (UTC)") == ["Coordinated Universal Time"]


def test_the_tables_words_for_what_is_asked_are_searched_too(reader):
    assert table_words("When did the US buy") == ["bought purchased purchase"]  # not "when"'s date, not "buy" twice
    assert table_words("when did it start") == ["began"] and table_words("what is the capital") == []
    assert table_words("a surreal name?") == [] and table_words("what is his real name") == ["birth"]  # whole words
    found = reader.find("when did the duke buy the copper mines", k=1)  # one passage: the one that says it
    assert "purchased" in found.passages[0].text and "1602" in found.best.text


def test_a_question_of_capitalised_words_spells_out_a_few_acronyms_only(reader, monkeypatch):
    words = [f"Q{a}{b}" for a in "ABCDEFGHIJ" for b in "KLMNOPQRST"]  # 100 acronyms no passage writes
    searched, search = [], reader.index.search
    monkeypatch.setattr(reader.index, "search", lambda query, *a, **k: searched.append(query) or search(query, *a, **k))
    reader.find(" ".join(words) + " STAND FOR?")
    assert 1 <= len([q for q in searched if q in words]) <= MAX_ACRONYMS  # one search each, of the first few


def test_the_terms_of_short_texts_are_remembered_and_of_long_ones_or_an_index_build_not():
    _remembered.cache_clear()
    terms("Andorra la Vella is the capital.")
    assert _remembered.cache_info().currsize == 1
    terms("亚里士多德" * 1000)  # 5,000 characters pasted into a chat: ~10,000 terms, not kept
    analyse([("Aristotle", "", "Aristotle was a Greek philosopher. " * 3)], 500)  # read once, not kept
    assert _remembered.cache_info().currsize == 1
    assert terms("亚里士多德" * 1000) == analyse_terms("亚里士多德" * 1000)  # the same terms either way


def test_a_field_whose_value_names_another_field_holds_that_fields_value(reader):
    found = reader.find("biggest city in brindavale?")  # "largest_city = capital": the capital is the largest
    assert (found.best.kind, found.best.attribute, found.best.text) == ("fact", "largest city", "Stonebridge")


def test_question_words_and_chatter_are_not_what_is_searched_or_asked(reader):
    assert query_terms("What does ICRISAT stand for?") == ["icrisat", "stand"]  # "what", "does" match everything
    assert reader.find("so what is Brindavale").best.kind == "lead"
    assert reader.asked("so what is Brindavale", reader.links("so what is Brindavale")).weights == {}  # "so" asks nothing
    assert reader.asked("what exactly is Brindavale", reader.links("what exactly is Brindavale")).weights == {}


def test_a_yes_no_question_is_answered_yes_or_no_only_when_the_evidence_settles_it(reader):
    assert reader.find("Is Brindavale landlocked?").best.text.startswith("Yes: ")
    assert reader.find("Is Brindavale a member of the European Union?").best.text.startswith("No: ")  # "not a member"
    mostly = reader.find("Is Brindavale a landlocked state of the old country?")  # all but the commonest words
    assert mostly.best.text.startswith("Yes: Brindavale is a landlocked")
    assert reader.find("Do the villages of the valley read the Valley Almanac?").best.text.startswith("Yes: ")
    assert reader.find("Does the village of Stonehollow read the Valley Almanac?").best.text.startswith("No: ")  # except it
    unsettled = reader.find("Is Brindavale famous for its cheese?")
    assert unsettled.best.kind != "yes/no" and unsettled.score <= UNSETTLED  # below any threshold: "not found"


def test_a_follow_up_that_names_nothing_is_about_the_entity_of_the_last_question(reader):
    history = ["Is Brindavale landlocked?", "Yes: Brindavale is a landlocked valley state in the high mountains."]
    found = reader.find("What is its capital?", history=history)
    assert found.links[0].title == "Brindavale" and found.best.title == "Brindavale"
    assert holds(found.best.text, ["Stonebridge"]) and found.answerable
    messages = [Message("user", history[0]), Message("assistant", history[1]), Message("user", "What is its capital?")]
    assert find_in_conversation(reader, messages).best.text == found.best.text  # the function chat and serve call


def test_a_long_message_is_read_by_its_end_and_its_history_within_bounds(reader, monkeypatch):
    """A served message may hold 16 x the context in characters; the reader's work (searches,
    graph look-ups) grows with what it reads: it reads a question's last MAX_QUESTION_CHARS,
    where a long message asks, and each reply's first MAX_REPLY_CHARS."""
    from wikigpt.knowledge.linking import MAX_QUESTION_CHARS, MAX_REPLY_CHARS, clipped

    searched = []
    real = reader.index.search
    monkeypatch.setattr(reader.index, "search", lambda q, *a, **kw: searched.append(q) or real(q, *a, **kw))
    chatter = "Thank you so much for all of your kind help so far today. " * 300  # ~17 k characters
    history = [chatter + "Is Brindavale landlocked?", "Yes: Brindavale is landlocked. " + chatter]
    found = reader.find(chatter + "What is its capital?", history=history)
    assert holds(found.best.text, ["Stonebridge"]) and found.links[0].title == "Brindavale"
    assert len(found.question) <= MAX_QUESTION_CHARS and found.question.endswith("What is its capital?")
    assert searched and max(map(len, searched)) <= MAX_QUESTION_CHARS + MAX_REPLY_CHARS
    chinese, _ = clipped("请告诉我" * 400 + "北京是什么？", [])  # no space to cut at: the end, whole
    assert len(chinese) == MAX_QUESTION_CHARS and chinese.endswith("北京是什么？")


def test_a_message_naming_many_entities_reads_the_first_few(reader):
    from wikigpt.knowledge.evidence import MAX_ENTITIES

    found = reader.find("Compare " + ", ".join(FILLER) + " and Brindavale: which is oldest?")
    assert len({l.subject for l in found.links}) > MAX_ENTITIES
    assert len({i.title for i in found.items if i.kind == "lead"}) == MAX_ENTITIES  # each entity's lead, first few


def test_items_a_follow_up_scores_alike_are_told_apart_by_what_the_conversation_just_said(reader):
    for about, year in (("calendar", "1902"), ("map", "1901")):
        history = [f"What did the Valley Almanac print with its {about}?", f"The almanac printed a {about}."]
        found = reader.find("When was it printed?", history=history)
        assert found.items[0].score == found.items[1].score and year in found.best.text, about


def test_a_reset_conversation_carries_nothing(reader):
    found = find_in_conversation(reader, [Message("user", "What is its capital?")])
    assert not found.links and not found.answerable  # nothing named, nothing carried: "not found"
    assert find_in_conversation(reader, [{"role": "user", "content": "What is its capital?"}]).links == []
    history = ["Is Brindavale landlocked?", "Yes: Brindavale is a landlocked valley state in the high mountains."]
    for switch in ("unrelated, but", "ok different topic -", "Switching subjects a bit,"):  # a new topic, said
        found = reader.find(f"{switch} when was it first published?", history=history)
        assert not found.links and found.best.title != "Brindavale", switch
    assert holds(reader.find("ok, what is its capital?", history=history).best.text, ["Stonebridge"])  # no new topic
    # ... nor past the switch, later; and the switch's words are not asked (nor its "unrelated" a "no")
    later = history + ["unrelated, but what is the Valley Almanac?", "a yearly book of the valley", "when was it printed?"]
    assert [l.title for l in reader.find(later[-1], history=later[:-1]).links] == ["Valley Almanac"]
    plain = reader.find("when was the Stonebridge Gazette first published?")
    switched = reader.find("different topic - when was the Stonebridge Gazette first published?", history=history)
    assert switched.best.text == plain.best.text and switched.score == plain.score
    assert reader.find("unrelated, but is Brindavale landlocked?", history=history).best.text.startswith("Yes: ")


def test_a_follow_up_naming_a_name_the_conversation_never_used_carries_nothing(reader):
    history = ["Is Brindavale landlocked?", "Yes: Brindavale is a landlocked valley state in the high mountains."]
    for question in ("Who is Barack Obama?", "and what about Zimbabwe?", "When was Harry Potter published?"):
        found = reader.find(question, history=history)
        assert not found.links and not found.answerable, question  # not Brindavale's evidence
    said = ["Who edited the Stonebridge Gazette?", "Its first editor was Tobias Marlow, of Stonebridge Gazette fame."]
    assert reader.find("When was Marlow hired?", history=said).links[0].title == "Stonebridge Gazette"  # a name just said
    assert reader.find("Where did Obama print it?", history=history).links[0].title == "Brindavale"  # "it" carries
    assert reader.find("how high do US maps put the peaks", history=history).links[0].title == "Brindavale"  # an acronym
    assert reader.find("What happened in May?", history=history).links[0].title == "Brindavale"  # a month: no name


def test_a_not_found_reply_names_the_closest_article_a_follow_up_may_mean(reader):
    shown = not_found(reader.find("Who was Mara Quill?"))  # what chat prints when it declines: the closest, titled
    messages = [Message("user", "What forecasts the weather?"), Message("assistant", shown),  # another's passage
                Message("user", "When was she born?")]
    found = find_in_conversation(reader, messages)
    assert found.links[0].title == "Mara Quill" and holds(found.best.text, ["1901"])


def test_a_follow_up_after_a_question_that_named_nothing_is_about_the_article_it_found(reader):
    history = ["Which newspaper printed a calendar?", "Its printers published a calendar in the same year."]
    found = reader.find("When was it first published?", history=history)  # the question named no title
    assert found.links[0].title == "Stonebridge Gazette" and "1852" in found.best.text
    # a second turn that names nothing either is about what the first found; so is a third
    history += ["what did the farmers bring to the mill every autumn?", "their grain"]  # words every article has
    found = reader.find("When was it first published?", history=history)
    assert found.links[0].title == "Stonebridge Gazette" and "1852" in found.best.text
    closest = without_abstention(not_found(reader.find("Who was Mara Quill?")))  # no "answer" left to link
    assert closest.strip().startswith("The closest I found (Mara Quill)") and "answer" not in closest
    # the article the reply's evidence came from, not the one the question's words find first
    # the passage the last reply came from is read too: a follow-up's answer is often beside it
    said = ["Who was the first editor?", "Rhys was a Welsh engraver."]
    assert "Valley Almanac" in [p.title for p in reader.find("What is the capital of Brindavale?", history=said).passages]
    history = ["which newspaper printed a calendar?", "The almanac printed a calendar in 1902."]
    assert reader.index.search(history[0], 1)[0].title == "Stonebridge Gazette"
    assert reader.find("and when did it print a map?", history=history).links[0].title == "Valley Almanac"


def test_and_x_after_a_follow_up_that_said_it_asks_that_follow_ups_question_of_x(reader):
    """"and Algeria?" after "What is the capital of Angola?" / "What currency does it use?" was read
    as it is (Algeria's lead): the last question wrote no name to put Algeria's in place of. The
    name goes where its first "it" / "its" was; a last message that said none is not rewritten."""
    again = reader.linker.asked_again
    said = ["What is the Valley Almanac?", "a yearly book of the valley", "When was it first published?", "1901"]
    assert again("and the Stonebridge Gazette?", said) == "When was Stonebridge Gazette first published?"
    found = reader.find("and the Stonebridge Gazette?", history=said)
    assert found.links[0].title == "Stonebridge Gazette" and "1852" in found.best.text, found.items[:3]
    its = ["What is the Valley Almanac?", "a yearly book", "Who was its first editor?", "Tomos Rhys"]
    assert again("what about Stonebridge Gazette?", its) == "Who was Stonebridge Gazette's first editor?"
    deeper = said + ["and the Stonebridge Gazette?", "1852"]  # the last question as it was read: two levels deep
    assert again("and Valley Almanac?", deeper) == "When was Valley Almanac first published?"
    for last in ("What was printed first?", "Thanks!", "Who wrote this?"):  # no "it" to put the name in place of
        talk = ["What is the Valley Almanac?", "a yearly book", last, "ok"]
        assert again("and Stonebridge Gazette?", talk) == "and Stonebridge Gazette?", last  # read as it is
    two = ["What is the Valley Almanac?", "a yearly book", "Who founded it and where did he live?", "Tomos Rhys"]
    assert again("and Stonebridge Gazette?", two) == "Who founded Stonebridge Gazette and where did he live?"
    named = ["When was the Valley Almanac first published?", "1901"]  # a name written: put in its place, as before
    assert again("and the Stonebridge Gazette?", named) == "When was the Stonebridge Gazette first published?"
    alone = ["When was it first published?", "1852"]  # "it" of nothing the conversation said: read as it is
    assert again("and the Stonebridge Gazette?", alone) == "and the Stonebridge Gazette?"


def test_he_after_a_reply_naming_someone_without_an_article_searches_for_that_someone(reader):
    history = ["Who edited the Stonebridge Gazette?", "Its first editor was Tobias Marlow, of Stonebridge Gazette fame."]
    links = reader.links("Stonebridge Gazette")
    assert reader.linker.person_replied("Where was he born?", links, history) == "Tobias Marlow"  # the linked title is skipped
    assert reader.linker.person_replied("Where was it printed?", links, history) == ""  # "it" is no person
    assert reader.linker.person_replied("Where was he born?", links, history[:1] + [""]) == ""  # declined: nothing said
    assert reader.linker.person_replied("unrelated, but where was he born?", links, history) == ""  # another topic
    assert reader.find("Where was he born?", history=history[:1] + [None]).links  # a reply a caller left out


def test_a_title_in_another_form_links_only_where_its_passages_are_all_that_articles(reader):
    assert [(l.title, l.kind) for l in reader.links("what is deserted")] == [("Desert", GUESSED)]  # Desert's word
    assert reader.links("what is mountainous") == []  # "mountain" is Brindavale's word too ("high mountains")
    calls = []
    near, reader.index.titles_near = reader.index.titles_near, lambda *a: calls.append(a) or []
    try:
        words = ["".join(chr(97 + i // 26 ** j % 26) for j in range(5)) + "q" for i in range(200)]
        reader.links(" ".join(words))  # made-up words: one fuzzy look-up in the titles each, at most
    finally:
        reader.index.titles_near = near
    assert len(calls) == MAX_GUESSED_WORDS


def test_without_the_graph_a_follow_up_is_read_without_error(reader):
    bare = Reader(reader.index, None)  # a folder made before the knowledge graph
    found = bare.find("what about its grain?", history=["Who was Mara Quill?", "She was a novelist."])
    assert found.links == [] and found.best is not None  # passages still read, nothing carried


def test_the_stored_thresholds_are_read_on_the_scale_they_were_chosen_on():
    assert stored_thresholds({"abstain_below": 0.8}, False) == (0.8, 0.8)  # the rules'
    kept = {"abstain_below": 0.7, "rules_abstain_below": 0.83, "confidence": {"features": ["old"]}}
    assert stored_thresholds(kept, True) == (0.7, 0.83)  # the confidence's, and the rules' beside it
    assert stored_thresholds(kept, False) == (0.83, 0.83)  # the confidence cannot be read: the rules'
    assert stored_thresholds({"abstain_below": 0.4, "confidence": {"features": ["old"]}}, False)[0] == DEFAULT_THRESHOLD
    after_ab = {"abstain_below": 0.61, "rules_abstain_below": 0.83, "confidence": None}  # --ab dropped it, chose 0.61
    assert stored_thresholds(after_ab, False) == (0.61, 0.61)


def test_lists_in_other_scripts_and_separators_and_common_words_in_capitals():
    assert names_an_element("Atlas Shrugged", "The Fountainhead · Atlas Shrugged · Anthem")  # {{·}} rendered
    assert names_an_element("阿富汗", "阿富汗、伊朗、巴基斯坦")
    assert {"launched", "launch", "happened"} <= set(ASKED)  # each its own entry of the table


def test_a_common_word_is_no_acronym_even_where_the_passages_write_it_in_capitals(reader):
    passage = [Passage("Land", "The US (United States) is large. The BSO (Brindavale Standards Office) is small.", "", 1.0)]
    assert reader.expansions("so what does the us stand for", [], passage) == []  # "us" is a word of the question
    assert [i.text for i in reader.expansions("and bso stands for what", [], passage)] == ["Brindavale Standards Office"]


def test_how_heavy_tall_deep_where_buried_or_who_supervised_asks_for_the_field_that_says_it(reader):
    for question, field in (("How heavy is Brindavale?", "weight"), ("How tall is it?", "height"),
                            ("How deep is it?", "depth"), ("How wide is it?", "width")):
        assert reader.asked(question, []).coverage(set(terms(field))) > 0, question
    # "buried" is a resting place or a place of burial, not any place: a birth place covers only "where"
    buried = reader.asked("Where is she buried?", [])
    assert buried.coverage(set(terms("resting place"))) == 1.0 and buried.coverage(set(terms("place of burial"))) == 1.0
    assert buried.coverage(set(terms("birth place"))) < 0.5
    for question, words in (("who was his dad", "father"), ("who is her mom", "mother"), ("his supervisor?", "doctoral advisor"),
                            ("what did his advisor do", "doctoral advisor"), ("the largest lake", "biggest"),
                            ("who would kill him", "death")):
        assert reader.asked(question, []).coverage(set(terms(words))) > 0, question
    shot = reader.asked("who shot him", [])  # an assassination's section or sentence says who
    assert shot.coverage(set(terms("Assassination"))) == 1.0 and reader.asked("who killed her", []).coverage({"death"}) == 1.0
    often = reader.asked("how often does it come out", [])  # a journal's infobox field
    assert often.coverage(set(terms("frequency"))) > often.coverage(set(terms("editor"))) == 0
    for question in ("who supervised his phd?", "who was his doctoral advisor"):  # a scientist's infobox field
        assert reader.asked(question, []).coverage(set(terms("doctoral advisor"))) == 1.0, question


def test_what_a_name_no_article_is_about_is_not_answered_by_a_passage_that_mentions_it(reader):
    mentioned = reader.find("Who was Joseph E. Marlow?")  # the gazette's first editor: mentioned, no article
    assert "Marlow" in mentioned.best.text and mentioned.score <= UNSETTLED and not mentioned.answerable
    assert unknown_name_asked("Tell me about A. S. Neill.") and unknown_name_asked("What is Interflug?")
    assert not unknown_name_asked("What's UNITA?")  # an acronym: spelled out
    assert not unknown_name_asked("What was the world's first animated feature film?")  # a description, no name


def test_the_follow_up_names_its_own_entity_over_the_conversations(reader):
    history = ["What is the capital of Brindavale?", "Stonebridge"]
    assert reader.find("Who was Mara Quill?", history=history).links[0].title == "Mara Quill"
