"""Answer metrics for question answering: SQuAD-normalised exact match and token F1 over aliases.

The normalisation is the one of the SQuAD / HotpotQA evaluation scripts: lower-case, remove
punctuation, remove the articles *a*, *an*, *the*, and collapse whitespace. A prediction is scored
against every gold alias and the best score counts.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = ["best_f1", "exact_match", "normalize_answer", "token_f1"]

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def _aliases(answers: str | Sequence[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals the normalised form of any alias, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in _aliases(answers)))


def token_f1(prediction: str, answer: str) -> float:
    """Token-level F1 between the normalised prediction and one normalised answer.

    When either side normalises to no tokens the score is 1.0 if both do and 0.0 otherwise.
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(answer).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, answers: str | Sequence[str]) -> float:
    """The best :func:`token_f1` of ``prediction`` over the gold aliases (0.0 when there are none)."""
    return max((token_f1(prediction, a) for a in _aliases(answers)), default=0.0)
