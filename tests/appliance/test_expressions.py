"""The formula expression parser: values, precedence, units, functions, errors."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qemud.appliance.template import UNITS, ExpressionError, evaluate, format_value

NAMES = {"host.memory": Fraction(8 * 2**30), "host.cores": Fraction(4), "x": Fraction(3),
         "host.nic0.mac": "00:11:22:33:44:55"}


@pytest.mark.parametrize(("text", "value"), [
    ("1", 1), ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("10 - 4 - 3", 3), ("2 * 3 / 4", 1.5),
    ("7 // 2", 3), ("-7 // 2", -4), ("7 / 2 // 1", 3), ("--3", 3), ("-x + +x", 0),
    ("1.5 * 2", 3), (".5 * 4", 2), ("512MiB", 512 * 2**20), ("2GiB - 512MiB", 1536 * 2**20),
    ("1K", 1024), ("1k", 1024), ("1KB", 1000), ("3 MB", None), ("1.5GiB", 1.5 * 2**30),
    ("host.memory - 512MiB", 8 * 2**30 - 512 * 2**20), ("min(host.cores, 2)", 2),
    ("max(1, host.cores - 1, 2)", 3), ("min(5)", 5), ("max(min(1, 2), (3))", 3),
    ("  x*x  ", 9), ("host.memory // 1GiB", 8),
])
def test_values(text: str, value: float | None) -> None:
    if value is None:  # a unit needs to be glued to its number
        with pytest.raises(ExpressionError):
            evaluate(text, NAMES)
        return
    assert evaluate(text, NAMES) == Fraction(value)


def test_strings_pass_through_names_only() -> None:
    assert evaluate("host.nic0.mac", NAMES) == "00:11:22:33:44:55"
    with pytest.raises(ExpressionError, match="needs numbers"):
        evaluate("max(host.nic0.mac, 1)", NAMES)
    with pytest.raises(ExpressionError, match="needs numbers"):
        evaluate("-host.nic0.mac", NAMES)


@pytest.mark.parametrize(("text", "position", "message"), [
    ("", 1, "empty expression"),
    ("1 +", 4, "expected a number, a name or '(', got end of expression"),
    ("(1 + 2", 7, "expected ')' (to close the '(' at position 1)"),
    ("1 2", 3, "unexpected '2' after a complete expression"),
    ("1 $ 2", 3, "unexpected character '$'"),
    ("5XiB", 2, "unknown unit 'XiB'"),
    ("host.memroy", 1, "unknown name 'host.memroy' (did you mean host.memory?)"),
    ("1 / (x - 3)", 3, "division by zero"),
    ("4 // 0", 3, "division by zero"),
    ("sqrt(4)", 1, "unknown function 'sqrt'"),
    ("min", 1, "function 'min' needs arguments"),
    ("min()", 5, "expected a number, a name or '('"),
    ("max(1,)", 7, "expected a number"),
    ("max(1 2)", 7, "expected ')'"),
])
def test_errors_with_position(text: str, position: int, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate(text, NAMES)
    assert info.value.position == position
    assert message in info.value.message


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ExpressionError, match="nested too deeply"):
        evaluate("(" * 500 + "1" + ")" * 500, NAMES)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        evaluate("-" * 500 + "1", NAMES)


def test_numbers_are_bounded() -> None:
    """Formulas are evaluated on the daemon's loop, for any client (a read-only one
    too): a number may not grow past MAX_BITS, nor be written longer than MAX_DIGITS."""
    big = Fraction(2) ** 254
    assert evaluate("x * 2", {"x": big}) == big * 2  # (2**255 has 256 bits: the limit)
    with pytest.raises(ExpressionError, match=r"the result of '\*' is too large "
                       r"\(more than 256 bits\)") as info:
        evaluate("x * 4", {"x": big})
    assert info.value.position == 3
    with pytest.raises(ExpressionError, match="too large"):
        evaluate("x + x + x", {"x": big * 2})
    with pytest.raises(ExpressionError, match="too large"):
        evaluate("1 / x", {"x": big * 4})
    with pytest.raises(ExpressionError, match=r"number too long \(more than 64 "):
        evaluate("1" * 65, NAMES)
    # formulas that square the one before stop at once, not after minutes
    names: dict[str, Fraction | str] = {"a0": Fraction(2 * 2**40)}
    with pytest.raises(ExpressionError, match="too large"):
        for k in range(1, 40):
            names[f"a{k}"] = evaluate(f"a{k - 1} * a{k - 1}", names)


def test_no_python_evaluation() -> None:
    for text in ("__import__('os')", "x.__class__", "[1]", "1 if 1 else 2", "x ** 2", "'a'"):
        with pytest.raises(ExpressionError):
            evaluate(text, NAMES)


@pytest.mark.parametrize(("value", "unit", "text"), [
    (Fraction(3), None, "3"), (Fraction(7, 2), None, "3.5"), (Fraction(1, 3), None, "0.333333"),
    (Fraction(-5, 2), None, "-2.5"), (Fraction(3 * 2**20 + 1), "MiB", "3"),
    (Fraction(2**30), "KiB", "1048576"), ("abc", None, "abc"),
])
def test_format_value(value: Fraction | str, unit: str | None, text: str) -> None:
    assert format_value(value, unit) == text


# -- property: random expression trees evaluate like exact arithmetic ----------------------

LEAVES = st.one_of(
    st.integers(0, 10**6).map(lambda n: (str(n), Fraction(n))),
    st.sampled_from(sorted(UNITS)).flatmap(lambda u: st.integers(0, 64).map(
        lambda n: (f"{n}{u}", Fraction(n * UNITS[u])))),
    st.sampled_from([("x", Fraction(3)), ("host.cores", Fraction(4))]),
)


def _combine(children: st.SearchStrategy[tuple[str, Fraction | None]]
             ) -> st.SearchStrategy[tuple[str, Fraction | None]]:
    def binary(op: str, a: tuple[str, Fraction | None], b: tuple[str, Fraction | None]
               ) -> tuple[str, Fraction | None]:
        text = f"({a[0]} {op} {b[0]})"
        if a[1] is None or b[1] is None:
            return text, None
        if op == "+":
            return text, a[1] + b[1]
        if op == "-":
            return text, a[1] - b[1]
        if op == "*":
            return text, a[1] * b[1]
        if b[1] == 0:
            return text, None  # division by zero: an error
        return text, a[1] / b[1] if op == "/" else Fraction(math.floor(a[1] / b[1]))

    def func(name: str, args: list[tuple[str, Fraction | None]]) -> tuple[str, Fraction | None]:
        text = f"{name}({', '.join(a[0] for a in args)})"
        values = [a[1] for a in args]
        if any(v is None for v in values):
            return text, None
        return text, (min if name == "min" else max)(values)  # type: ignore[type-var]

    return st.one_of(
        st.builds(binary, st.sampled_from(["+", "-", "*", "/", "//"]), children, children),
        st.builds(lambda a: (f"-{a[0]}", None if a[1] is None else -a[1]), children),
        st.builds(func, st.sampled_from(["min", "max"]), st.lists(children, min_size=1,
                                                                  max_size=3)),
    )


EXPRESSIONS = st.recursive(LEAVES, _combine, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(EXPRESSIONS)
def test_random_expressions(expr: tuple[str, Fraction | None]) -> None:
    text, expected = expr
    if expected is None:
        with pytest.raises(ExpressionError, match="division by zero"):
            evaluate(text, NAMES)
    else:
        assert evaluate(text, NAMES) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.+-*/() ,xminaMGiB_", max_size=30))
def test_garbage_never_crashes(text: str) -> None:
    try:
        value = evaluate(text, NAMES)
    except ExpressionError as exc:
        assert 1 <= exc.position <= len(text) + 1
    else:
        assert isinstance(value, Fraction)
