"""The expression language: what it computes, what it refuses (and where), and how evaluation fails."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow.errors import ExpressionError, Permanent
from edgeflow.expr import (
    AGGREGATES,
    FUNCTIONS,
    EvalError,
    compile_expr,
    compile_map,
    compile_predicate,
    compile_template,
    parse_aggregate,
)
from edgeflow.message import Message

pytestmark = pytest.mark.timeout(60)

PAYLOAD: dict[str, Any] = {
    "device": "dev-3",
    "temp": 31.2,
    "hum": 40.1,
    "seq": 7,
    "ts": 1.7e9,
    "tags": ["a", "b"],
    "a": {"b": {"c": 3}, "list": [10, 20, 30]},
    "nothing": None,
    "text": "  Hello World  ",
    "temp-c": 12,
    "len": 99,
}
MSG = Message(PAYLOAD, source="sensors", topic="site/dev-3", ts=1234.5, id="id-1", headers={"ct": "json"})


def ev(source: str, payload: Any = None, msg: Message = MSG) -> Any:
    return compile_expr(source).fn(PAYLOAD if payload is None else payload, msg)


def compile_error(source: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        compile_expr(source)
    return info.value


def eval_error(source: str, payload: Any = None, msg: Message = MSG) -> EvalError:
    with pytest.raises(EvalError) as info:
        ev(source, payload, msg)
    return info.value


# --- values and operators -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("2 ** 3 ** 2", 512),
        ("-2 ** 2", -4),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("7 % 3", 1),
        ("-seq + 1", -6),
        ("temp * 9 / 5 + 32", 31.2 * 9 / 5 + 32),
        ("'ab' + 'cd'", "abcd"),
        ("\"double\" + 'single'", "doublesingle"),
    ],
)
def test_arithmetic_follows_the_usual_precedence(source: str, expected: Any) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [("true", True), ("false", False), ("null", None), ("True", True), ("False", False), ("None", None)],
)
def test_true_false_null_are_constants_in_both_spellings(source: str, expected: Any) -> None:
    assert ev(source) is expected


def test_lists_are_values() -> None:
    assert ev("[1, seq, 'x']") == [1, 7, "x"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("true and false", False),
        ("true or false", True),
        ("not false", True),
        ("not temp > 30", False),
        ("temp > 30 and device != 'test'", True),
        ("temp > 40 or seq == 7", True),
        ("nothing or 'default'", "default"),
    ],
)
def test_boolean_logic(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_and_or_short_circuit_so_a_guarded_missing_field_is_not_read() -> None:
    assert ev("has('missing') and missing > 3") is False
    assert ev("true or missing") is True


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("seq == 7", True),
        ("seq != 7", False),
        ("seq < 7", False),
        ("seq <= 7", True),
        ("seq > 6", True),
        ("seq >= 8", False),
        ("1 < seq < 10", True),
        ("1 < seq < 5", False),
        ("nothing == null", True),
        ("device == 'dev-3'", True),
    ],
)
def test_comparisons_including_chained_ones(source: str, expected: bool) -> None:
    assert ev(source) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("device in ['dev-1', 'dev-3']", True),
        ("device not in ['dev-1', 'dev-3']", False),
        ("'a' in tags", True),
        ("'z' not in tags", True),
        ("'ev' in device", True),
        ("'b' in a", True),
    ],
)
def test_in_tests_membership_in_lists_strings_and_mappings(source: str, expected: bool) -> None:
    assert ev(source) is expected


def test_conditional_expression() -> None:
    assert ev("'hot' if temp > 30 else 'ok'") == "hot"
    assert ev("'hot' if temp > 40 else 'ok'") == "ok"


def test_expression_may_span_lines_and_be_indented() -> None:
    assert ev("  temp > 30\n  and device != 'test'\n") is True


# --- fields and metadata --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a.b.c", 3),
        ("a['b']['c']", 3),
        ("a.b['c']", 3),
        ("a.list[1]", 20),
        ("a.list[-1]", 30),
        ("a.list[0:2]", [10, 20]),
        ("tags[seq - 7]", "a"),
    ],
)
def test_nested_fields_and_subscripts(source: str, expected: Any) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("meta.topic", "site/dev-3"),
        ("meta.ts", 1234.5),
        ("meta.source", "sensors"),
        ("meta.id", "id-1"),
        ("meta.headers", {"ct": "json"}),
        ("meta.headers.ct", "json"),
        ("meta.headers['ct']", "json"),
    ],
)
def test_meta_reads_the_message_metadata(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_a_bare_name_equal_to_a_function_name_is_a_field() -> None:
    assert ev("len") == 99
    assert ev("len(tags)") == 2


def test_field_reads_names_that_are_not_identifiers() -> None:
    assert ev("field('temp-c') + 1") == 13
    assert ev("field('absent', 5)") == 5


def test_dunder_strings_are_mapping_keys_never_attributes() -> None:
    assert ev("get('__class__', 'none')") == "none"
    assert ev("a['__class__'] if has('a.__class__') else 'none'") == "none"


def test_fields_lists_the_top_level_payload_fields_read() -> None:
    expr = compile_expr("temp > 30 and a.b.c == 3 and meta.topic != '' and get('x.y') == has('z')")
    assert expr.fields == frozenset({"temp", "a", "x", "z"})
    assert expr.source == "temp > 30 and a.b.c == 3 and meta.topic != '' and get('x.y') == has('z')"


def test_expr_object_is_callable_like_its_fn() -> None:
    expr = compile_expr("seq + 1")
    assert expr(PAYLOAD, MSG) == expr.fn(PAYLOAD, MSG) == 8


# --- functions ------------------------------------------------------------------------------------

FUNCTION_CASES: list[tuple[str, Any]] = [
    ("abs(-3)", 3),
    ("round(temp)", 31),
    ("round(temp * 1.07, 1)", 33.4),
    ("min(3, seq, 9)", 3),
    ("min(a.list)", 10),
    ("max(3, seq, 1)", 7),
    ("max(a.list)", 30),
    ("int('12') + int('12.7') + int(3.9)", 27),
    ("float('2.5')", 2.5),
    ("str(seq) + str(null) + str(true)", "7nulltrue"),
    ("[bool('yes'), bool('off'), bool(''), bool(0), bool(tags)]", [True, False, False, False, True]),
    ("len(device)", 5),
    ("lower('AbC')", "abc"),
    ("upper(device)", "DEV-3"),
    ("strip(text)", "Hello World"),
    ("startswith(device, 'dev-')", True),
    ("startswith(device, ['x', 'dev'])", True),
    ("endswith(device, '-3')", True),
    ("[contains(device, 'v-'), contains(tags, 'b'), contains(tags, 'z')]", [True, True, False]),
    ("replace(device, '-', '_')", "dev_3"),
    ("[substr(device, 1), substr(device, 0, 3), substr(device, -1, 1)]", ["ev-3", "dev", "3"]),
    ("concat(device, '/', seq, '/', null)", "dev-3/7/null"),
    ("coalesce(nothing, missing, a.missing, seq)", 7),
    ("[get('a.b.c'), get('a.zz', 0), get('zz')]", [3, 0, None]),
    ("[has('a.b.c'), has('a.b.zz'), has('device.x')]", [True, False, False]),
    ("field('temp-c')", 12),
    ("[floor(temp), ceil(temp)]", [31, 32]),
    ("sqrt(16)", 4.0),
    ("[log(1), log(8, 2)]", [0.0, 3.0]),
    ("exp(0)", 1.0),
    ("pow(2, 10)", 1024),
    ("[clamp(temp, 0, 30), clamp(-5, 0, 30), clamp(12, 0, 30)]", [30, 0, 12]),
    ("to_json(a.b)", '{"c":3}'),
    ("parse_json('{\"k\": [1, 2]}').k[1]", 2),
    ("[regex_match(device, '^dev-[0-9]$'), regex_match(device, 'x+')]", [True, False]),
    ("regex_match(device, concat('^', 'dev'))", True),
    ("format_time(0)", "1970-01-01T00:00:00Z"),
    ("format_time(86400 + 3661, '%Y-%m-%d %H:%M:%S')", "1970-01-02 01:01:01"),
]


@pytest.mark.parametrize(("source", "expected"), FUNCTION_CASES)
def test_function(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_now_is_the_current_epoch_time() -> None:
    before = time.time()
    value = ev("now()")
    assert before <= value <= time.time()


def test_every_registered_function_is_tested_and_documented() -> None:
    tested = {name for name in FUNCTIONS if any(f"{name}(" in source for source, _ in FUNCTION_CASES)}
    assert set(FUNCTIONS) - tested == {"now"}  # now() has its own test
    for name, f in FUNCTIONS.items():
        assert f.signature.startswith(f"{name}(")
        assert f.doc
        assert "\n" not in f.doc


def test_coalesce_evaluates_later_arguments_only_when_needed() -> None:
    assert ev("coalesce(seq, 1 / 0)") == 7


def test_coalesce_of_only_missing_fields_is_null() -> None:
    assert ev("coalesce(missing, meta.headers.missing)") is None


def test_round_halves_to_even_like_python() -> None:
    assert ev("[round(2.5), round(3.5)]") == [2, 4]


# --- what is refused, and where -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fragment", "col"),
    [
        ("__import__('os')", "'__import__' is not allowed", 1),
        ("().__class__", "'__class__' is not allowed", 4),
        ("x.__dict__", "'__dict__' is not allowed", 3),
        ("x.__class__()", "'__class__' is not allowed", 3),
        ("temp > 1 and __builtins__", "'__builtins__' is not allowed", 14),
        ("lambda: 1", "'lambda' is not allowed", 1),
        ("seq + (lambda x: x)(1)", "'lambda' is not allowed", 8),
        ("[x for x in tags]", "comprehensions", 1),
        ("1 + max(x for x in tags)", "comprehensions", 8),
        ("(y := 1)", "':=' (assignment) is not allowed", 2),
        ("f'{temp}'", "f-strings are not allowed", 1),
        ("import os", "'import' is not allowed", 1),
        ("seq if from else 1", "'from' is not allowed", 8),
        ("x = 3", "'=' is not allowed", 3),
        ("max(*tags)", "'*' unpacking is not allowed", 5),
        ("round(temp, n=1)", "named arguments (n=) are not supported", 13),
        ("{'a': 1}", "mappings", 1),
        ("{1, 2}", "sets", 1),
        ("(1, 2)", "tuples", 1),
        ("device.upper()", "write upper(s)", 1),
        ("tags[0](1)", "only the documented functions can be called", 1),
        ("seq is null", "'is' is not supported", 5),
        ("seq & 1", "'&' is not supported", 5),
        ("~seq", "'~' is not supported", 1),
        ("b'raw'", "bytes literals", 1),
        ("'abc'.x", "string has no fields", 1),
        ("seq # comment", "comments", 5),
        ("open('/etc/passwd')", "unknown function 'open'", 1),
        ("getattr(x, 'y')", "unknown function 'getattr'", 1),
    ],
)
def test_forbidden_construct_is_refused_at_its_column(source: str, fragment: str, col: int) -> None:
    error = compile_error(source)
    assert fragment in error.message
    assert error.col == col
    assert error.source == source


def test_unknown_function_suggests_the_closest_one() -> None:
    error = compile_error("temp > 3 and fo(temp) > 1")
    assert error.message == "unknown function 'fo' (did you mean 'floor'?)"
    assert error.col == 14


def test_unknown_meta_field_suggests_the_closest_one() -> None:
    error = compile_error("meta.tpic == 'x'")
    assert error.message == "unknown field of meta: 'tpic' (did you mean 'topic'?)"
    assert error.col == 6


def test_meta_alone_is_refused_with_the_fields_it_offers() -> None:
    assert "meta.topic" in compile_error("meta == 1").message


def test_aggregate_outside_a_window_is_refused() -> None:
    assert "aggregate" in compile_error("avg(temp) > 3").message


def test_wrong_number_of_arguments_names_the_signature() -> None:
    error = compile_error("seq + substr(device)")
    assert error.message == "substr() does not take 1 argument: substr(s, start, len?)"
    assert error.col == 7


def test_invalid_literal_regex_is_refused_at_compile_time() -> None:
    error = compile_error("regex_match(device, '(')")
    assert error.message.startswith("invalid regular expression")
    assert error.col == 21


@pytest.mark.parametrize(
    ("source", "message", "col"),
    [
        ("temp > > 3", "invalid syntax", 8),
        ("temp > 30 and", "the expression ends too early", 14),
        ("(temp > 30", "'(' was never closed", 1),
        ("", "empty expression", 1),
    ],
)
def test_syntax_errors_have_a_column(source: str, message: str, col: int) -> None:
    error = compile_error(source)
    assert error.message == message
    assert error.col == col


def test_columns_count_characters_not_bytes() -> None:
    assert compile_error("'é' == x.__y").col == 10


def test_columns_count_from_the_start_of_a_multi_line_expression() -> None:
    assert compile_error("seq +\n a.__b").col == 10


def test_expression_must_be_a_string() -> None:
    with pytest.raises(ExpressionError):
        compile_expr(3)  # type: ignore[arg-type]


def test_long_sums_and_conjunctions_compile() -> None:
    assert ev(" + ".join(["seq"] * 600)) == 7 * 600
    assert ev(" and ".join(["seq == 7"] * 600)) is True


@pytest.mark.parametrize(
    "source",
    [
        "(" * 500 + "1" + ")" * 500,
        "+".join(["1"] * 5000),
        "1" + "**1" * 1000,
        "-" * 1000 + "1",
        "x" + ".x" * 2000,
        "max(1, " * 300 + "1" + ")" * 300,
    ],
)
def test_absurdly_deep_expression_is_refused_not_a_crash(source: str) -> None:
    error = compile_error(source)
    assert error.col is not None


# --- evaluation errors ----------------------------------------------------------------------------


def test_missing_field_names_the_field() -> None:
    assert eval_error("temp > 30 and missing == 1").message == "missing field 'missing'"


def test_missing_nested_field_names_the_whole_path() -> None:
    assert eval_error("a.b.zz + 1").message == "missing field 'a.b.zz'"
    assert eval_error("a['q']['r']").message == "missing field 'a.q'"


def test_missing_header_names_the_meta_path() -> None:
    assert eval_error("meta.headers.zz").message == "missing field 'meta.headers.zz'"


def test_reading_inside_a_value_that_is_not_a_mapping_says_so() -> None:
    message = eval_error("device.x").message
    assert message == "field 'device' is string, not a mapping; cannot read 'device.x'"


def test_payload_that_is_not_a_mapping_says_so() -> None:
    assert eval_error("temp > 3", b"raw").message == "payload is bytes, not a mapping; cannot read 'temp'"


def test_null_in_a_comparison_is_an_error_not_false() -> None:
    assert eval_error("nothing > 3").message == "cannot compare null > number"
    with pytest.raises(EvalError):
        compile_predicate("nothing > 3").fn(PAYLOAD, MSG)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("seq / 0", "division by zero"),
        ("seq % 0", "division by zero"),
        ("seq + device", "cannot compute number + string"),
        ("device + seq", "cannot compute string + number"),
        ("-device", "cannot compute -string"),
        ("tags[9]", "index out of range"),
        ("lower(seq)", "lower(): expected a string, got number"),
        ("sqrt(-1)", "sqrt(): math domain error"),
        ("bool('maybe')", "bool(): cannot read 'maybe' as true or false"),
        ("10 ** 10 ** 10", "10 ** 10000000000 is too large a number"),
        ("(-8) ** 0.5", "-8 ** 0.5 has no real result"),
        ("field('zz')", "missing field 'zz'"),
        ("len(seq)", "number has no length"),
    ],
)
def test_evaluation_errors_read_like_reasons(source: str, message: str) -> None:
    assert eval_error(source).message == message


def test_evaluation_error_is_permanent_so_the_message_is_dead_lettered() -> None:
    error = eval_error("missing")
    assert isinstance(error, Permanent)
    assert str(error) == "missing field 'missing'"
    assert error.source == "missing"


def test_predicate_coerces_to_true_or_false() -> None:
    assert compile_predicate("tags").fn(PAYLOAD, MSG) is True
    assert compile_predicate("nothing").fn(PAYLOAD, MSG) is False
    assert compile_predicate("seq - 7").fn(PAYLOAD, MSG) is False
    assert compile_predicate("temp > 30 and device != 'test'").fn(PAYLOAD, MSG) is True


def test_predicate_on_a_missing_field_raises_instead_of_being_false() -> None:
    with pytest.raises(EvalError, match="missing field 'missing'"):
        compile_predicate("missing > 3").fn(PAYLOAD, MSG)


# --- map ------------------------------------------------------------------------------------------


def test_map_returns_a_new_dict_and_leaves_the_payload_alone() -> None:
    payload = {"temp": 30.0, "hum": 40, "nested": {"k": 1}}
    before = json.loads(json.dumps(payload))
    out = compile_map({"temp_f": "temp * 9 / 5 + 32"}, ["hum"])(payload, MSG)
    assert out == {"temp": 30.0, "nested": {"k": 1}, "temp_f": 86.0}
    assert out is not payload
    assert payload == before


def test_map_set_expressions_all_read_the_incoming_payload() -> None:
    out = compile_map({"a": "b", "b": "a"}, [])({"a": 1, "b": 2}, MSG)
    assert out == {"a": 2, "b": 1}


def test_map_set_wins_over_drop_of_the_same_key() -> None:
    out = compile_map({"x": "x + 1"}, ["x", "y"])({"x": 1, "y": 2, "z": 3}, MSG)
    assert out == {"x": 2, "z": 3}


def test_map_dropping_an_absent_key_is_not_an_error() -> None:
    assert compile_map({}, ["absent"])({"x": 1}, MSG) == {"x": 1}


def test_map_dotted_keys_set_and_drop_nested_fields_on_copies() -> None:
    payload = {"a": {"b": 1, "c": 2}, "n": 5}
    out = compile_map({"a.d": "n * 2", "new.deep.x": "1"}, ["a.c"])(payload, MSG)
    assert out == {"a": {"b": 1, "d": 10}, "n": 5, "new": {"deep": {"x": 1}}}
    assert payload == {"a": {"b": 1, "c": 2}, "n": 5}


def test_map_cannot_set_inside_a_value_that_is_not_a_mapping() -> None:
    with pytest.raises(EvalError, match=r"set key 'n\.x'"):
        compile_map({"n.x": "1"}, [])({"n": 5}, MSG)


def test_map_compile_error_names_the_key() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_map({"ok": "1", "bad": "temp +* fo(1)"}, [])
    assert info.value.message.startswith("set key 'bad': ")
    assert info.value.source == "temp +* fo(1)"


def test_map_evaluation_error_names_the_key() -> None:
    fn = compile_map({"ok": "temp", "bad": "missing + 1"}, [])
    with pytest.raises(EvalError) as info:
        fn({"temp": 1}, MSG)
    assert info.value.message == "set key 'bad': missing field 'missing'"


def test_map_of_a_payload_that_is_not_a_mapping_is_an_evaluation_error() -> None:
    with pytest.raises(EvalError, match="payload is bytes, not a mapping"):
        compile_map({"x": "1"}, [])(b"raw", MSG)


@pytest.mark.parametrize(
    ("set_", "drop"),
    [({"": "1"}, []), ({"a..b": "1"}, []), ({"x": 1}, []), ({}, "hum"), ({}, [""]), (["x"], [])],
)
def test_map_refuses_malformed_keys_and_arguments(set_: Any, drop: Any) -> None:
    with pytest.raises(ExpressionError):
        compile_map(set_, drop)


# --- templates ------------------------------------------------------------------------------------


def test_template_without_braces_is_constant() -> None:
    assert compile_template("cloud/all")(b"anything", MSG) == "cloud/all"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("cloud/{device}/avg", "cloud/dev-3/avg"),
        ("{meta.source}:{meta.topic}", "sensors:site/dev-3"),
        ("t={round(temp * 1.07, 1)}", "t=33.4"),
        ("{nothing}/{seq > 3}/{tags}", "null/true/['a', 'b']"),
        ("{{literal}} {seq}", "{literal} 7"),
        ("{{}}", "{}"),
        ("{'}' + device}", "}dev-3"),
        ("{get('a.b').c}", "3"),
    ],
)
def test_template_renders_expressions_in_braces(template: str, expected: str) -> None:
    assert compile_template(template)(PAYLOAD, MSG) == expected


def test_template_missing_field_is_an_evaluation_error() -> None:
    with pytest.raises(EvalError, match="missing field 'nope'"):
        compile_template("cloud/{nope}")(PAYLOAD, MSG)


@pytest.mark.parametrize(
    ("template", "fragment", "col"),
    [
        ("a/{device", "'{' is never closed", 3),
        ("a}b", "single '}'", 2),
        ("a/{ }/b", "empty '{}'", 3),
        ("cloud/{fo(1)}", "unknown function 'fo'", 8),
        ("cloud/{x.__class__}", "'__class__' is not allowed", 10),
    ],
)
def test_template_errors_point_into_the_template(template: str, fragment: str, col: int) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_template(template)
    assert fragment in info.value.message
    assert info.value.col == col
    assert info.value.source == template


# --- aggregates -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(AGGREGATES) - {"count"}))
def test_aggregate_with_an_argument(name: str) -> None:
    agg, expr = parse_aggregate(f"{name}(temp * 2)")
    assert agg == name
    assert expr is not None
    assert expr.fn(PAYLOAD, MSG) == 62.4
    assert expr.fields == frozenset({"temp"})
    assert expr.source == "temp * 2"


def test_count_takes_no_argument() -> None:
    assert parse_aggregate("count()") == ("count", None)
    with pytest.raises(ExpressionError) as info:
        parse_aggregate("count(x)")
    assert info.value.col == 7


@pytest.mark.parametrize(
    ("source", "fragment", "col"),
    [
        ("median(temp)", "unknown aggregate 'median'", 1),
        ("avg(temp) + 1", "one call like avg(temp)", 1),
        ("avg(temp, hum)", "takes exactly one argument", 1),
        ("avg()", "takes exactly one argument", 1),
        ("max(fo(temp))", "unknown function 'fo'", 5),
    ],
)
def test_bad_aggregate_is_refused_at_its_column(source: str, fragment: str, col: int) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_aggregate(source)
    assert fragment in info.value.message
    assert info.value.col == col


# --- agreement with Python on the shared subset ---------------------------------------------------


def _arith(leaves: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.tuples(inner, st.sampled_from(["+", "-", "*", "//", "%"]), inner)
        return st.one_of(
            binary.map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda e: f"(-{e})"),
        )

    return st.recursive(leaves, extend, max_leaves=12)


LEAVES = st.one_of(st.integers(-1000, 1000).map(str), st.sampled_from(["x", "y", "z"]))


@settings(max_examples=300, deadline=None)
@given(
    left=_arith(LEAVES),
    op=st.sampled_from(["==", "!=", "<", "<=", ">", ">=", None]),
    right=_arith(LEAVES),
    env=st.fixed_dictionaries({"x": st.integers(-50, 50), "y": st.integers(-50, 50), "z": st.integers(-3, 3)}),
)
def test_integer_arithmetic_agrees_with_python(left: str, op: str | None, right: str, env: dict[str, int]) -> None:
    source = left if op is None else f"{left} {op} {right}"
    try:
        expected: Any = eval(source, {"__builtins__": {}}, dict(env))
    except ZeroDivisionError:
        with pytest.raises(EvalError, match="division by zero"):
            compile_expr(source).fn(env, MSG)
        return
    assert compile_expr(source).fn(env, MSG) == expected


@settings(max_examples=200, deadline=None)
@given(a=st.floats(allow_nan=False, allow_infinity=False), b=st.floats(allow_nan=False, allow_infinity=False))
def test_float_comparisons_and_clamp_agree_with_python(a: float, b: float) -> None:
    env = {"a": a, "b": b}
    assert compile_expr("a < b or a == b").fn(env, MSG) == (a < b or a == b)
    lo, hi = min(a, b), max(a, b)
    assert compile_expr("clamp(0.5, min(a, b), max(a, b))").fn(env, MSG) == min(max(0.5, lo), hi)
    assert not math.isnan(compile_expr("abs(a - b)").fn(env, MSG))
