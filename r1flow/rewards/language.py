"""Language-consistency reward (paper §2.3.2): the share of target-language words in the CoT.

The paper adds it to the accuracy reward to stop the CoT mixing languages. Units counted:
each CJK character (Han, kana, Hangul) is one unit and each run of letters of any other
script is one word (``don't`` is one word); a Han character is Chinese (``zh``), a Latin-script
word is English (``en``), anything else counts against every target. Not language, so ignored:
digits, punctuation, Greek letters (math symbols: ``π``), LaTeX (``$…$``, ``$$…$$``, ``\\(…\\)``,
``\\[…\\]``, any ``\\command``) and code (fenced blocks, ``inline``). ``$5 and $6`` is not
math: like pandoc, a closing ``$`` needs a non-space before it and no digit after it.

A CoT with no units at all (``2 + 3 = 5``) scores 1.0: it mixes no languages, and scoring it
lower would push the policy away from plain arithmetic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from r1flow.rewards.parsing import check_template, split_completion

LANGUAGES = ("en", "zh")

_NOT_LANGUAGE = re.compile(
    r"```.*?(?:```|\Z)"  # fenced code; an unclosed fence or block runs to the end
    r"|`[^`\n]*`"  # inline code
    r"|\$\$.*?(?:\$\$|\Z)"  # display math
    r"|\\\(.*?(?:\\\)|\Z)|\\\[.*?(?:\\\]|\Z)"  # \( inline \) and \[ display \] math
    r"|\\[A-Za-z]+"  # LaTeX command
    r"|\\."  # escaped character (\$, \{, ...)
    r"|\$(?=\S)[^$]*?(?<=\S)\$(?!\d)",  # inline math, pandoc's rule
    re.S,
)
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK = _HAN + "\u3040-\u30ff\uac00-\ud7af"
_LETTER = rf"(?:(?![{_CJK}])[^\W\d_])"
_UNIT = re.compile(rf"[{_CJK}]|{_LETTER}+(?:['’]{_LETTER}+)*")
_HAN_CHAR = re.compile(rf"[{_HAN}]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f'’]+")
_GREEK_WORD = re.compile(r"[\u0370-\u03ff\u1f00-\u1fff]+")


def _is_target(unit: str, lang: str) -> bool:
    if lang == "zh":
        return _HAN_CHAR.fullmatch(unit) is not None
    return _LATIN_WORD.fullmatch(unit) is not None


def language_units(text: str) -> list[str]:
    """The language units of ``text`` (CJK characters and words), math and code removed."""
    prose = _NOT_LANGUAGE.sub(" ", text)
    return [u for u in _UNIT.findall(prose) if not _GREEK_WORD.fullmatch(u)]


def check_lang(lang: str) -> str:
    """Return ``lang`` if it is a supported target language, else raise ``ValueError``."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; known: {list(LANGUAGES)}")
    return lang


def language_consistency(text: str, lang: str = "en") -> float:
    """Share of ``text``'s language units that are in ``lang``; 1.0 when it has none.

    >>> language_consistency("First add 2 and 3, 然后 multiply")  # 4 English words of 6 units
    0.6666666666666666
    """
    check_lang(lang)
    units = language_units(text)
    if not units:
        return 1.0
    return sum(_is_target(u, lang) for u in units) / len(units)


def mixes_languages(text: str) -> bool:
    """Does ``text`` hold units of more than one language (Chinese, English, anything else)?
    The mixed-language CoT rate the language reward should cut (paper §2.3.2).

    >>> mixes_languages("7 plus 5 是 12"), mixes_languages("7 加 5 是 12"), mixes_languages("7 + 5 = 12")
    (True, False, False)
    """
    kinds = {"zh" if _is_target(u, "zh") else "en" if _is_target(u, "en") else "other"
             for u in language_units(text)}
    return len(kinds) > 1


def language_reward(
    completions: Sequence[str],
    golds: Sequence[str] | None = None,
    *,
    template: str = "r1",
    lang: str = "en",
    **kwargs: object,
) -> list[float]:
    """``language_consistency`` of each completion's reasoning (all of it when unclosed).

    A completion with no reasoning block (R1-Zero template, no ``<think>``) scores 0.0.
    """
    check_template(template), check_lang(lang)
    scores = []
    for completion in completions:
        reasoning = split_completion(completion, template)[0]
        scores.append(0.0 if reasoning is None else language_consistency(reasoning, lang))
    return scores
