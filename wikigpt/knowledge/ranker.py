"""
Two small learned models over the evidence reader's own measurements, both stored as numbers in
the index's info file (add_index_info) beside the threshold:

- Ranker: an item's features -> the chance that it holds the answer (orders the candidates).
  Trained on the grounded QA rows of the *train* articles (qa_items) and, optionally, the
  natural dev split; never on its test split.
- Confidence: the best item's standing among the others (its score, the margin to the next,
  how many tie with it, its passage's retrieval rank, ...) -> the chance that the answer is
  right; the "not found" threshold is then a probability. Boosted regression trees (fitted with
  scikit-learn, stored as plain numbers, read here without it), then calibrated per kind of
  question. Trained on the natural dev split.

    reader.ranker = Ranker.from_info(index.info)          # Reader does both itself
    reader.confidence = Confidence.from_info(index.info)
    reader.find(q).confidence                             # then: compared with the threshold
"""
import math
from dataclasses import dataclass, field

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
# an unlinked name is no answer (natural.template_confidence_rows). How far the best sentence's
# number, date or name lies from the asked words: the rules use it only to break ties, and the
# trees with it answered 0.40-0.41 of dev's held-out questions right, not 0.38 (four orderings of
# the folds; wrong within +-0.01; follow-ups +3 to +9 of 366: docs/measured.md).
CONFIDENCE_FEATURES = ("best score", "margin to the next", "ties in the next five", "passage rank",
                       "log length", "next five agree", "question covered", "named nothing",
                       "typed answer distance")


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-max(min(z, 30), -30)))


@dataclass
class Ranker:
    weights: list  # one per feature, then the bias
    KEY, NAMES = "ranker", FEATURES  # where the weights live in the index info, what they weigh

    def score(self, x: list[float]) -> float:
        return sigmoid(sum(w * v for w, v in zip(self.weights, x)) + self.weights[-1])

    def to_info(self) -> dict:
        return {self.KEY: {"features": list(self.NAMES), "weights": [round(w, 4) for w in self.weights]}}

    @classmethod
    def from_info(cls, info: dict) -> "Ranker | None":
        r = info.get(cls.KEY)
        if not r or r.get("features") != list(cls.NAMES):
            return None  # none stored, or stored for other features: the rules rank (judge)
        return cls(r["weights"])


@dataclass
class Confidence:
    """The chance that the best item holds the answer, from CONFIDENCE_FEATURES
    (Reader.confidence_features): the sum of boosted regression trees is a log-odds, then moved
    per kind of question (questions.question_kind) by a slope and an offset fitted on questions
    the trees did not see (natural.fit_confidence). Without one stored, the best item's rule
    score is judged."""
    trees: list  # each a list of nodes [feature, threshold, left, right, value]; feature -1: a leaf
    calibration: dict = field(default_factory=dict)  # question kind -> [slope, offset] of the log-odds
    KEY, NAMES = "confidence", CONFIDENCE_FEATURES

    def logit(self, x: list[float]) -> float:
        z = 0.0
        for nodes in self.trees:
            n = 0
            while nodes[n][0] >= 0:  # [feature, threshold, left, right, value]: x[feature] <= threshold goes left
                n = nodes[n][2] if x[nodes[n][0]] <= nodes[n][1] else nodes[n][3]
            z += nodes[n][4]
        return z

    def score(self, x: list[float], kind: str = "") -> float:
        return self.calibrated(self.logit(x), kind)

    def calibrated(self, z: float, kind: str = "") -> float:
        """The chance from the trees' log-odds, as calibrated for that kind of question."""
        slope, offset = self.calibration.get(kind, (1.0, 0.0))
        return sigmoid(slope * z + offset)

    def to_info(self) -> dict:
        return {self.KEY: {"features": list(self.NAMES), "trees": self.trees, "calibration": self.calibration}}

    @classmethod
    def from_info(cls, info: dict) -> "Confidence | None":
        c = info.get(cls.KEY)
        if not c or c.get("features") != list(cls.NAMES) or not isinstance(c.get("trees"), list) \
                or not all(well_formed(tree, len(cls.NAMES)) for tree in c["trees"]):
            return None  # none stored, stored for other features, as another model or damaged: the rules' score is judged
        return cls(c["trees"], c.get("calibration", {}))


def well_formed(nodes: list, n_features: int) -> bool:
    """Each split reads a feature there is and leads to nodes after it (so a walk ends)."""
    if not isinstance(nodes, list):
        return False
    for n, node in enumerate(nodes):
        if not isinstance(node, list) or len(node) != 5:
            return False
        feature, _, left, right, _ = node
        if feature >= 0 and not (feature < n_features and n < left < len(nodes) and n < right < len(nodes)):
            return False
    return bool(nodes)


# 100 trees of depth 3 at a rate of 0.05, each leaf holding 20 or more questions: on the natural dev
# split (~1,000 questions and turns) deeper or more trees fit its questions, not new ones (docs/measured.md)
TREES, DEPTH, RATE, LEAF = 100, 3, 0.05, 20


def boost(X: list[list[float]], y: list[int], seed: int = 0) -> list:
    """Gradient-boosted regression trees of the log-odds (scikit-learn's, needed only here: the
    trees are returned as plain numbers, the learning rate folded into their leaves)."""
    if len(set(y)) < 2:  # one class only: a single leaf at its (clipped) log-odds
        return [[[-1, 0.0, 0, 0, 5.0 if y and y[0] else -5.0]]]
    from sklearn.ensemble import GradientBoostingClassifier
    model = GradientBoostingClassifier(init="zero", n_estimators=TREES, max_depth=DEPTH, learning_rate=RATE,
                                       min_samples_leaf=LEAF, random_state=seed).fit(np.asarray(X), np.asarray(y))
    trees = []
    for estimator in model.estimators_[:, 0]:
        t = estimator.tree_
        trees.append([[int(t.feature[n]) if t.children_left[n] >= 0 else -1, round(float(t.threshold[n]), 6),
                       int(t.children_left[n]), int(t.children_right[n]), round(float(t.value[n, 0, 0]) * RATE, 6)]
                      for n in range(t.node_count)])
    return trees


def calibrate(pairs: list[tuple[float, bool]], shrink: float = 0.1, steps: int = 2000) -> list[float]:
    """[slope, offset] so that sigmoid(slope * log-odds + offset) matches how often a kind's best
    evidence was right (Platt scaling), pulled towards [1, 0] (no change) by `shrink`: a kind has
    a few dozen questions on dev."""
    z = np.array([zi for zi, _ in pairs], dtype=np.float64)
    y = np.array([float(ok) for _, ok in pairs])
    a, b = 1.0, 0.0
    for _ in range(steps):
        q = 1 / (1 + np.exp(-np.clip(a * z + b, -30, 30)))
        a, b = a - 0.5 * (((q - y) * z).mean() + shrink * (a - 1)), b - 0.5 * ((q - y).mean() + shrink * b)
    return [round(a, 4), round(b, 4)]


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
