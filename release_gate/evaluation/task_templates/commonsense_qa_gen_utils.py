"""Scoring of ``commonsense_qa_gen``: which option a free-text answer names (lm-eval ``process_results``).

An answer names an option by its letter (``C``, ``(C)``, ``C.``) or by its text (case, punctuation
and extra trailing words ignored; the longest matching option wins). Options with the same text as
the gold one count as correct: CommonsenseQA has a few duplicated options. ``exact`` is stricter: the
answer is the gold option's text and nothing else (case and punctuation ignored), no letter, no extra words.
"""

import re

_LETTER = re.compile(r"^\s*\(?([A-E])(?:$|[\s.):,])")


def _words(text):
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def chosen(doc, response):
    """The index of the option ``response`` names, or None."""
    letter = _LETTER.match(response)
    if letter:
        return "ABCDE".index(letter.group(1))
    answer = _words(response)
    if not answer:
        return None
    options = [_words(t) for t in doc["choices"]["text"]]
    hits = [i for i, t in enumerate(options) if t and (answer == t or answer.startswith(t + " "))]
    return max(hits, key=lambda i: len(options[i])) if hits else None


def process_results(doc, results):
    picked = chosen(doc, results[0])
    gold = _words(doc["choices"]["text"][doc["choices"]["label"].index(doc["answerKey"])])
    correct = picked is not None and _words(doc["choices"]["text"][picked]) == gold
    return {"acc": float(correct), "exact": float(_words(results[0]) == gold), "valid": float(picked is not None)}
