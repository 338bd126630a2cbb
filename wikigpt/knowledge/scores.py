"""
Scores for generated text against references, the same for every tool that reports them
(eval.py, the knowledge QA of wikiqa.py). Words are lowercased runs of letters and digits;
Chinese, which has no spaces, counts each character as a word.

    BLEU, chrF   corpus-level, by sacrebleu (its `zh` tokenizer when references hold Chinese)
    ROUGE-L      F-measure of the longest common subsequence of words, by rouge-score
    token F1     SQuAD's bag-of-words overlap
    distinct-n   unique n-grams / all n-grams over all replies (low: the same words everywhere)
    loops        a reply loops when one word 3-gram occurs 3 or more times in it
"""
import re
from collections import Counter

from wikigpt.knowledge.retrieval import CJK  # kana, ideographs, hangul: scripts written without spaces between words

CJK_CHAR = re.compile(f"[{CJK}]")
_WORD = re.compile(f"[{CJK}]|[^\\W_{CJK}]+")  # one CJK character, or a run of other letters/digits


def has_cjk(text: str) -> bool:
    return bool(CJK_CHAR.search(text))


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = words(prediction), words(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


class _Words:
    """rouge-score's tokenizer interface over `words` (its default drops every non-ASCII letter)."""
    def tokenize(self, text):
        return words(text)


_rouge = None


def rouge_l(prediction: str, reference: str) -> float:
    global _rouge
    if _rouge is None:
        from rouge_score.rouge_scorer import RougeScorer
        _rouge = RougeScorer(["rougeL"], tokenizer=_Words())
    return _rouge.score(reference, prediction)["rougeL"].fmeasure


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100) of one reference per prediction."""
    import sacrebleu
    tokenize = "zh" if any(has_cjk(r) for r in references) else "13a"
    return sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize).score


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (0-100): character n-gram F-score, needs no word splitting in any language."""
    import sacrebleu
    return sacrebleu.corpus_chrf(predictions, [references]).score


def ngrams(seq: list, n: int) -> list[tuple]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct(texts: list[str], n: int) -> float:
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def loops(text: str, n: int = 3, times: int = 3) -> bool:
    counts = Counter(ngrams(words(text), n))
    return bool(counts) and max(counts.values()) >= times
