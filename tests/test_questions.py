"""What a question asks, read from its words alone (wikigpt/knowledge/questions.py, and the
exceptions evidence.py reads yes / no by): the type of answer asked and whether a text holds one,
how near it is to the words asked, a conversation's lead-ins and topic switches."""
from wikigpt.knowledge.analysis import terms
from wikigpt.knowledge.yes_no import EXCEPTED
from wikigpt.knowledge.questions import ANSWER_TYPES, NEW_TOPIC, has_new, typed_distance, without_lead_in


def kind_of(question: str) -> str:
    return next((kind for kind, pattern in ANSWER_TYPES if pattern.search(question)), "")


def test_an_answer_of_the_type_asked_says_what_the_question_does_not():
    known = set(terms("Who commanded Apollo 8?"))
    assert not has_new("person", "The insignia shows the shape of the Apollo Command Module.", known)
    assert has_new("person", "The crew: Commander Frank Borman and two others.", known)
    assert not has_new("person", "Mission Control approved the plan.", known)  # a sentence's opening words
    for name in ("Frank O'Connor", "Émile Zola", "Elsa Löwenthal"):  # a spouse field's value, read as a name
        assert has_new("person", f" {name}", set(terms("Who was she married to?"))), name
    known = set(terms("What happened in 1968?"))
    assert not has_new("date", "The 1968 mission orbited the Moon.", known)
    assert has_new("date", "It launched on December 21, 1968.", known)  # a month is news
    known = set(terms("How many people lived in Andorra in 2010?"))
    assert not has_new("number", "In 2010 Andorra held elections.", known)  # the question's own number
    assert has_new("number", "In 2010 Andorra had 84,082 people.", known)
    known = set(terms("how many sections is it in?"))  # a number written as a word
    assert has_new("number", "The piece is structured into five sections.", known)
    assert has_new("number", "Fifteen statuettes were awarded.", known) and has_new("number", "up to a dozen dens", known)
    assert not has_new("number", "It is one of the sections most often played.", known)  # "one of": no count
    # how many: a year is no count; "number of ...", "what share of ..." ask for one too
    for question in ("How many movies did Allan Dwan direct?", "number of people with autism worldwide?",
                     "what share of all fish species are ray-finned fish"):
        assert kind_of(question) == "count", question
    known = set(terms("How many movies did Allan Dwan direct?"))
    assert not has_new("count", "He directed his last movie in 1961.", known)
    assert has_new("count", "Over a long career, Dwan directed 125 motion pictures.", known)
    assert has_new("count", "About 2000 people live there.", known)  # what it counts follows it: no year
    # where someone is from: a people's adjective or a place after "from" / "of" / "in", and the
    # question's "where ... from" / "country" counts as covered by it (not by a sentence that says "from")
    for question in ("where was he from?", "what country was she from", "What nationality was Schopenhauer?"):
        assert kind_of(question) == "origin", question
    assert kind_of("where does the word acid come from") == ""
    known = set(terms("where was he from?"))
    assert has_new("origin", "It was coined by the Swiss psychiatrist Eugen Bleuler.", known)
    assert has_new("origin", "A former Democrat, Hannibal Hamlin of Maine, was nominated.", known)
    assert not has_new("origin", "He excludes it from the family of languages.", known)
    for text in ("Allan Dwan directed 125 films.", "Brian wrote it.", "He was born in March.", "It opens from Monday."):
        assert not has_new("origin", text, known), text  # a name ending -an, a month or a day is no origin


def test_a_number_nearer_the_words_asked_is_the_nearer_answer():
    asked, known = set(terms("provinces")), set(terms("How many provinces does Algeria have?"))
    near = typed_distance("number", "In 1990 Algeria was divided into 48 provinces.", asked, known)
    far = typed_distance("number", "In 1990 Algeria had its provinces redrawn.", asked, known)
    assert near < far < 99 and typed_distance("number", "Algeria has provinces.", asked, known) == 99
    assert typed_distance("count", "In 1990 Algeria was divided into 48 provinces.", asked, known) == near  # not 1990


def test_who_did_it_is_the_name_after_by_near_the_verb_asked():
    asked, known = set(terms("killed")), set(terms("Who killed Achilles?"))
    by = typed_distance("person", "Achilles was killed near the end of the war by Paris, who shot him.", asked, known)
    agent = typed_distance("person", "Achilles later killed Troilus.", asked, known)  # Achilles did it: no "by"
    assert by < 99 and agent == 99
    assert typed_distance("person", "He was killed by Achilles.", asked, known) == 99  # the name asked about


def test_a_lead_in_is_blanked_where_it_stands_and_only_a_switch_said_as_an_aside_changes_the_topic():
    assert without_lead_in("and when did he die") == "    when did he die"  # same length: names stay where found
    assert kind_of(without_lead_in("ok and who made it?")) == "person" and without_lead_in("so?") == "so?"
    for switch in ("unrelated, but what did julian huxley do", "different topic - who played chakotay",
                   "ok different topic, what's the temperature", "switching subjects a bit, which system"):
        assert NEW_TOPIC.match(switch) and not without_lead_in(switch).startswith(("unrel", "diff", "ok", "switch")), switch
    for follow_up in ("Unrelated to his work, when did he die?", "and another subject he taught?", "new subjects he set?"):
        assert not NEW_TOPIC.match(follow_up) and without_lead_in(follow_up).split()[0] in ("Unrelated", "another", "new")


def test_what_a_sentence_leaves_out_is_a_name_or_list_not_a_clause():
    assert EXCEPTED.search("Every village reads it, except Stonehollow.")[1] == "Stonehollow"
    assert EXCEPTED.search("Some are corrosive, but there are exceptions such as carboranes and boric acid.")[1] == \
        "carboranes and boric acid"
    assert EXCEPTED.search("Except in wartime every village of the valley reads the almanac.") is None


def test_small_talk_is_greetings_and_thanks_only_never_a_question_that_asks_something():
    from wikigpt.knowledge.questions import small_talk
    for said in ("Hello! How are you today?", "hi there", "Thanks!", "thank you so much", "Who are you?", "bye!",
                 "good morning everyone", "你好", "谢谢！"):
        assert small_talk(said), said
    for asked in ("Hello, what is the capital of Andorra?", "Thanks! And what currency does it use?",
                  "How are you related to Aristotle?", "What is great about Albania?", "hey what is ASCII",
                  "你好，日本的首都是哪里？", "Tell me about Albania.", "hello " * 30):
        assert not small_talk(asked), asked


def test_circa_does_not_end_a_sentence():
    """"unknown there from c. AD 600 to c. 1100 except ..." was cut after "from c.", and that
    fragment answered "Who was his teacher?" about Aristotle."""
    from wikigpt.knowledge.sentences import split_sentences
    text = "He was unknown there from c. AD 600 to c. 1100 except in Syria. Then ca. 1200 he came back."
    assert split_sentences(text) == ["He was unknown there from c. AD 600 to c. 1100 except in Syria.",
                                     "Then ca. 1200 he came back."]


def test_an_opening_sentence_just_over_the_bound_stays_whole_and_a_long_one_is_cut_between_words():
    """Andorra's 241-character opening was cut at 240: the lead answer lost its period."""
    from wikigpt.knowledge.sentences import opening_sentence
    andorra = ("Andorra, officially the Principality of Andorra, also called the Principality of the Valleys of "
               "Andorra, is a sovereign landlocked microstate in Southwestern Europe, located in the eastern "
               "Pyrenees mountains and bordered by Spain and France.")
    assert len(andorra) == 241 and opening_sentence(andorra + " Created under a charter in 988.") == andorra
    long = "The river " + "flows far " * 40 + "to the sea."
    cut = opening_sentence(long)
    assert cut.endswith("far…") and len(cut) <= 241 and long.startswith(cut[:-1])  # whole words, marked as cut
    chinese = "长江" + "流经很多地方" * 60 + "。"
    assert opening_sentence(chinese) == chinese[:240] + "…"


def test_a_chinese_quote_is_not_cut_at_the_sentence_ends_inside_it():
    """《静夜思》's quoted poem was cut after 霜。 and a reply quoted half of it; 子曰's quote became
    three sentences. A quote never closed holds its sentence ends for MAX_QUOTED characters only."""
    from wikigpt.knowledge.sentences import MAX_QUOTED, opening_sentence, split_sentences
    poem = "《静夜思》全诗为：“床前明月光，疑是地上霜。举头望明月，低头思故乡。”"
    assert split_sentences(poem) == [poem] and opening_sentence(poem + "\n下一段。") == poem
    assert split_sentences("子曰：“学而时习之，不亦说乎？有朋自远方来，不亦乐乎？”一句广为流传。「好。」他说。") == \
        ["子曰：“学而时习之，不亦说乎？有朋自远方来，不亦乐乎？”一句广为流传。", "「好。」他说。"]
    unclosed = split_sentences("他说：“" + "好。" * MAX_QUOTED)
    assert len(unclosed[0]) <= MAX_QUOTED + 4 and len(unclosed) > MAX_QUOTED // 2
