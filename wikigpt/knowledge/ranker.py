"""
Two small learned models over the evidence reader's own measurements, both logistic regression
(numpy, no new dependency), both stored as a few numbers in the index's info file
(add_index_info) beside the threshold:

- Ranker: an item's features -> the chance that it holds the answer (orders the candidates).
  Trained on the grounded QA rows of the *train* articles (qa_items) and, optionally, the
  natural dev split; never on its test split.
- Confidence: the best item's standing among the others (its score, the margin to the next,
  how many tie with it, its passage's retrieval rank, ...) -> the chance that the answer is
  right; the "not found" threshold is then a probability. Trained on the natural dev split.

    reader.ranker = Ranker.from_info(index.info)          # Reader does both itself
    reader.confidence = Confidence.from_info(index.info)
    reader.find(q).confidence                             # then: compared with the threshold
"""
import math
from dataclasses import dataclass

import numpy as np

KINDS = ("fact", "section", "lead", "sentence", "reverse", "expansion")
FEATURES = ("rule score", "about the named entity", "about a carried entity", "asked covered", "question covered",
            "answer type asked", "answer type present", "rule rank 1", "rule rank 2-3", "named nothing",
            "log length") + tuple(f"kind {k}" for k in KINDS)


def features(item, rule: float, rank: int, about: float, asked_cov: float, whole_cov: float, type_asked: bool,
             type_present: bool, linked: bool, carried: bool) -> list[float]:
    """One candidate's features, in the order of FEATURES."""
    return [rule, float(about >= 0.9 and not carried), float(carried), asked_cov, whole_cov, float(type_asked),
            float(type_asked and type_present), float(rank == 0), float(0 < rank < 3), float(not linked),
            math.log(1 + len(item.text)) / 5] + [float(item.kind == k) for k in KINDS]


# Why these: on the natural dev split the rule score alone separates right from wrong best answers
# with AUC 0.75, the margin to the next candidate 0.73, the ties among the next five 0.69, the
# passage's retrieval rank 0.71, the length 0.68 (long sentences that share words are the usual
# wrong answer); with all 25 candidate features the 5-fold held-out model over-fitted (0.20 right
# at <= 3 % wrong, these 7: 0.31-0.33). "Named nothing" lets it learn, from template questions
# about names the corpus lacks ("Tell me about A. S. Neill."), that a sentence merely mentioning
# an unlinked name is no answer (natural.template_confidence_rows).
CONFIDENCE_FEATURES = ("best score", "margin to the next", "ties in the next five", "passage rank",
                       "log length", "next five agree", "question covered", "named nothing")


@dataclass
class Ranker:
    weights: list  # one per feature, then the bias
    KEY, NAMES = "ranker", FEATURES  # where the weights live in the index info, what they weigh

    def score(self, x: list[float]) -> float:
        z = sum(w * v for w, v in zip(self.weights, x)) + self.weights[-1]
        return 1 / (1 + math.exp(-max(min(z, 30), -30)))

    def to_info(self) -> dict:
        return {self.KEY: {"features": list(self.NAMES), "weights": [round(w, 4) for w in self.weights]}}

    @classmethod
    def from_info(cls, info: dict) -> "Ranker | None":
        r = info.get(cls.KEY)
        if not r or r.get("features") != list(cls.NAMES):
            return None  # none stored, or stored for other features: the rules rank (judge)
        return cls(r["weights"])


class Confidence(Ranker):
    """The chance that the best item holds the answer, from CONFIDENCE_FEATURES
    (Reader.confidence_features); without one stored, the best item's rule score is judged."""
    KEY, NAMES = "confidence", CONFIDENCE_FEATURES


def train(X: list[list[float]], y: list[int], l2: float = 1e-2, steps: int = 3000, lr: float = 0.5) -> Ranker:
    """Logistic regression by full-batch gradient descent; positives and negatives weighed
    equally (a question has ~100 candidates and at most a few right ones)."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)  # (N, F), (N,)
    X = np.hstack([X, np.ones((len(X), 1))])  # the bias as a feature
    pos = max(y.sum(), 1.0)
    sample = np.where(y > 0, 0.5 / pos, 0.5 / max(len(y) - pos, 1.0))  # (N,) each class half the loss
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -30, 30)))
        grad = X.T @ (sample * (p - y)) + l2 * np.r_[w[:-1], 0.0]
        w -= lr * grad
    return Ranker(w.tolist())
