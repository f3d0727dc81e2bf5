"""The compiled literal screen of redaction (``vigil/alerts/_screen.c``): it must name every pattern the
Python screen names, on ASCII text of any case, and step aside (None) for text that is not ASCII, where
``str.lower()`` can turn other characters into ASCII letters. Redaction must give the same result with the
compiled screen and without it."""

from __future__ import annotations

import random

import pytest

from vigil.alerts import redact as redact_module
from vigil.alerts.redact import (
    _CASED_BITS,
    _LONG_B64,
    _LONG_BIT,
    _LOWER_BITS,
    _todo_py,
    redact_all,
    redact_text,
)

_screen = redact_module._screen
needs_screen = pytest.mark.skipif(_screen is None, reason="built without a C compiler")

LITERALS = [n for n, _ in _CASED_BITS + _LOWER_BITS]
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=_-.:%@ \t\n\"'[]{}"


def _texts(seed: int, count: int) -> list[str]:
    """Random ASCII strings built of the screen's literals (in random case, cut, joined) and filler,
    from empty to past the long-blob threshold, with runs of base64 characters of every length near it."""
    rng = random.Random(seed)
    texts = ["", "a", "A" * 85, "A" * 86, "a" * 85 + "B", "x" * 200, "+/" * 43, "-" * 90]
    for _ in range(count):
        parts: list[str] = []
        for _ in range(rng.randrange(1, 6)):
            kind = rng.random()
            if kind < 0.4:
                word = rng.choice(LITERALS)
                word = "".join(c.upper() if rng.random() < 0.3 else c for c in word)
                if rng.random() < 0.2:
                    word = word[: rng.randrange(1, len(word) + 1)]
                parts.append(word)
            elif kind < 0.5:
                parts.append(
                    "".join(rng.choice("ABCdef0123+/") for _ in range(rng.choice([20, 85, 86, 87, 130])))
                )
            else:
                parts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 30))))
        texts.append("".join(parts))
    return texts


@needs_screen
def test_the_compiled_screen_names_what_the_python_screen_names() -> None:
    assert _screen is not None
    for text in _texts(11, 20_000):
        found = _screen.screen(text)
        assert found is not None, text
        assert found & ~_LONG_BIT == _todo_py(text) & ~_LONG_BIT, text
        if not found & _LONG_BIT:  # (no run of 86 base64 characters: the long-blob pattern cannot match)
            assert _LONG_B64.search(text) is None, text


@needs_screen
def test_text_that_is_not_ascii_is_left_to_the_python_screen() -> None:
    assert _screen is not None
    # the Kelvin sign lowers to "k": "to\u212aen".lower() == "token"
    assert "to\u212aen".lower() == "token"
    assert _screen.screen("to\u212aen=abc") is None
    assert _screen.screen("caf\u00e9") is None
    assert redact_text("my to\u212aen=abcdef") == redact_all("my to\u212aen=abcdef")
    with pytest.raises(TypeError):
        _screen.screen(b"token")  # type: ignore[arg-type]


def test_redaction_is_the_same_with_and_without_the_compiled_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = _texts(12, 3_000)
    with_screen = [redact_text(t) for t in texts]
    monkeypatch.setattr(redact_module, "_screen", None)
    assert [redact_text(t) for t in texts] == with_screen
    assert with_screen == [redact_all(t) for t in texts]
