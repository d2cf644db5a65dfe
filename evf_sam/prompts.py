"""What counts as an empty prompt: no visible character.

A prompt made only of whitespace or of invisible characters (zero-width space U+200B, byte order
mark U+FEFF, word joiner U+2060, soft hyphen, bidi controls, variation selectors, Hangul fillers,
...) tokenizes to ``<s></s>`` and would be segmented as if it said something. Every entry point
(predictor, tokenizers, CLI, demo) rejects it like an empty prompt. A prompt with at least one
visible character is used as given (invisible characters inside it are not removed: the
official inference passes the text to the tokenizer unchanged).
"""

from __future__ import annotations

import unicodedata

__all__ = ["EmptyPromptError", "check_prompt", "is_blank"]

# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt; not exposed by
# unicodedata) plus U+2800 BRAILLE PATTERN BLANK, which renders as nothing.
_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)


class EmptyPromptError(ValueError):
    """A prompt with no visible character."""


def _invisible(ch: str) -> bool:
    if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp"):
        return True
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in _IGNORABLE)


def is_blank(prompt: str) -> bool:
    """True when ``prompt`` has no visible character (empty, whitespace, zero-width characters)."""
    return all(_invisible(ch) for ch in prompt)


def check_prompt(prompt: object, where: str = "") -> str:
    """``prompt`` stripped of surrounding whitespace; `EmptyPromptError` (a ValueError) when it has no
    visible character, TypeError when it is not a string. ``where`` names it in the message
    (e.g. "prompt 2")."""
    label = where or "prompt"
    if not isinstance(prompt, str):
        raise TypeError(f"{label} is a {type(prompt).__name__}, not a string")
    if is_blank(prompt):
        detail = "" if not prompt else (
            " (only whitespace)" if prompt.isspace() else
            f" (only invisible characters: "
            f"{', '.join(f'U+{ord(c):04X}' for c in dict.fromkeys(prompt) if not c.isspace())})")
        raise EmptyPromptError(f"{label} is empty{detail}; every prompt needs visible text")
    return prompt.strip()
