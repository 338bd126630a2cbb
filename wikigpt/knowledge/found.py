"""
What the evidence reader returns (evidence.Reader.find): the pieces of evidence it weighed, and
for a question, all of them best first with what was read to find them.
"""
import re
from dataclasses import dataclass, field

# a sentence that opens with a pronoun is about its article's subject: "He married Steffi Graf ..."
# (Andre Agassi) answers "Who is Steffi Graf married to?" only with the article named
OPENS_WITH_PRONOUN = re.compile(r"^(?:He|She|It|They|His|Her|Its|Their)\b")


@dataclass
class Item:
    """A piece of evidence: a fact (attribute: value), a section's opening, an article's lead
    sentence, or a sentence (or list item) of a retrieved passage."""
    kind: str  # "fact" | "section" | "lead" | "sentence"
    title: str  # the article it comes from
    text: str  # what an answer quotes: the fact's value, or the sentence
    attribute: str = ""  # a fact's attribute, a section's heading
    url: str = ""
    score: float = 0.0
    passage: int = 0  # a sentence's passage's retrieval rank (0: the best; the entity's own items 0)

    @property
    def quoted(self) -> str:
        """What a reply says of it: its text, after its article's title where it is a sentence
        that opens with a pronoun (so that the reply stands alone)."""
        if self.kind == "sentence" and OPENS_WITH_PRONOUN.match(self.text):
            return f"{self.title}: {self.text}"
        return self.text

    @property
    def label(self) -> str:
        """How a source is named in the prompt and under a reply: 'Andorra (capital)'."""
        return f"{self.title} ({self.attribute})" if self.kind in ("fact", "section") else self.title


@dataclass
class Found:
    question: str
    lang: str
    links: list  # the entities the question names, the one it is about first
    items: list  # evidence, best first
    passages: list  # the retrieved passages (retrieval.Passage), best first
    threshold: float
    confidence: float | None = None  # the chance that best holds the answer (ranker.Confidence), if one is stored
    features: dict = field(default_factory=dict, repr=False)  # item text -> ranker.features (before yes / no)
    kind: str = ""  # questions.question_kind: what the confidence is calibrated by

    @property
    def best(self) -> Item | None:
        return self.items[0] if self.items else None

    @property
    def score(self) -> float:
        return self.items[0].score if self.items else 0.0

    @property
    def judged(self) -> float:
        """What the threshold is compared with: the confidence when the index stores a model for
        it, else the best item's score."""
        return self.score if self.confidence is None else self.confidence

    @property
    def answerable(self) -> bool:
        return self.judged >= self.threshold
