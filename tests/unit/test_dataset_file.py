"""Tests of reading a JSONL dataset file: valid files, the content version, every error."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.errors import DatasetFormatError, InputError
from scheduler.experiments.dataset_file import MAX_JSON_DEPTH, load_dataset_file

MAX = 1024


def write(tmp_path: Path, content: bytes | str, name: str = "cases.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def lines(*objects: Any) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


def load_error(path: Path, max_line_bytes: int = MAX) -> DatasetFormatError:
    with pytest.raises(DatasetFormatError) as info:
        load_dataset_file(path, max_line_bytes=max_line_bytes)
    return info.value


def assert_error_at(path: Path, line: int, *words: str, max_line_bytes: int = MAX) -> str:
    """The error names FILE:LINE first and says what is wrong (every word in `words`)."""
    err = load_error(path, max_line_bytes)
    message = str(err)
    assert message.startswith(f"{path}:{line}: "), message
    assert err.path == str(path)
    assert err.line == line
    for word in words:
        assert word in message, (word, message)
    return message


# --- a valid file ---------------------------------------------------------------------------


def test_valid_file_gives_items_in_order_with_line_positions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        (
            '{"id": "a", "input": "What is 2+2?", "expected": "4"}\n'
            "\n"
            "   \n"
            '{"id": 7, "input": {"question": "Capital of France?"}, "expected": ["Paris"], '
            '"metadata": {"category": "geo"}, '
            '"assertions": [{"type": "contains", "value": "P"}]}\n'
            '{"input": [{"role": "user", "content": "hi"}]}\n'
        ),
    )
    parsed = load_dataset_file(path, max_line_bytes=MAX)

    assert parsed.name == "cases"
    assert parsed.source == str(path)
    assert [i["key"] for i in parsed.items] == ["a", "7", "5"]
    assert [i["position"] for i in parsed.items] == [1, 4, 5]
    first, second, third = parsed.items
    assert first["input"] == "What is 2+2?"
    assert first["expected"] == "4"
    assert first["meta"] is None and first["assertions"] is None
    assert second["input"] == {"question": "Capital of France?"}
    assert second["expected"] == ["Paris"]
    assert second["meta"] == {"category": "geo"}
    assert second["assertions"] == [{"type": "contains", "value": "P"}]
    assert third["input"] == [{"role": "user", "content": "hi"}]
    assert third["expected"] is None


def test_int_id_becomes_str_and_missing_id_defaults_to_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, lines({"id": 42, "input": "x"}, {"input": "y"}, {"id": -3, "input": 1}))
    keys = [i["key"] for i in load_dataset_file(path, max_line_bytes=MAX).items]
    assert keys == ["42", "2", "-3"]
    assert all(isinstance(k, str) for k in keys)


def test_crlf_line_endings_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"input": "a"}\r\n{"input": "b"}\r\n')
    items = load_dataset_file(path, max_line_bytes=MAX).items
    assert [(i["key"], i["input"]) for i in items] == [("1", "a"), ("2", "b")]


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, '{"input": "a"}\n{"id": "last", "input": "b"}')
    assert [i["key"] for i in load_dataset_file(path, max_line_bytes=MAX).items] == ["1", "last"]


def test_name_argument_overrides_the_file_stem(tmp_path: Path) -> None:
    path = write(tmp_path, lines({"input": "x"}))
    assert load_dataset_file(path, max_line_bytes=MAX, name="qa").name == "qa"


def test_a_line_exactly_max_line_bytes_long_is_accepted(tmp_path: Path) -> None:
    prefix, suffix = '{"input": "', '"}'
    line = prefix + "a" * (MAX - len(prefix) - len(suffix)) + suffix
    assert len(line.encode()) == MAX
    path = write(tmp_path, line + "\n" + '{"input": "b"}\n')
    items = load_dataset_file(path, max_line_bytes=MAX).items
    assert [i["position"] for i in items] == [1, 2]


# --- the version ----------------------------------------------------------------------------

BASE = [
    {
        "id": "a",
        "input": "q1",
        "expected": "x",
        "metadata": {"k": 1},
        "assertions": [{"type": "contains", "value": "x"}],
    },
    {"id": "b", "input": {"question": "q2"}, "expected": ["y", "z"]},
]


def version_of(tmp_path: Path, cases: list[dict[str, Any]], name: str = "v.jsonl") -> str:
    return load_dataset_file(write(tmp_path, lines(*cases), name), max_line_bytes=MAX).version


def test_version_is_stable_for_the_same_content(tmp_path: Path) -> None:
    v1 = version_of(tmp_path, BASE, "one.jsonl")
    v2 = version_of(tmp_path, BASE, "one.jsonl")
    assert v1 == v2
    assert len(v1) == 16 and int(v1, 16) >= 0


def test_version_is_independent_of_the_file_name_and_key_order(tmp_path: Path) -> None:
    reordered = [dict(reversed(list(case.items()))) for case in BASE]
    assert version_of(tmp_path, BASE, "first.jsonl") == version_of(
        tmp_path, reordered, "second-name.jsonl"
    )


def test_version_is_independent_of_json_spacing(tmp_path: Path) -> None:
    compact = "".join(json.dumps(c, separators=(",", ":")) + "\n" for c in BASE)
    spaced = "".join(json.dumps(c, indent=None, separators=(" , ", " : ")) + "\n" for c in BASE)
    v1 = load_dataset_file(write(tmp_path, compact, "a.jsonl"), max_line_bytes=MAX).version
    v2 = load_dataset_file(write(tmp_path, spaced, "b.jsonl"), max_line_bytes=MAX).version
    assert v1 == v2


@pytest.mark.parametrize(
    ("index", "field", "value"),
    [
        (0, "id", "a2"),
        (0, "input", "q1 "),
        (0, "expected", "X"),
        (0, "expected", None),
        (0, "metadata", {"k": 2}),
        (0, "assertions", [{"type": "contains", "value": "y"}]),
        (1, "input", {"question": "q3"}),
        (1, "expected", ["z", "y"]),
    ],
)
def test_version_changes_when_any_case_changes(
    tmp_path: Path, index: int, field: str, value: Any
) -> None:
    changed = [dict(case) for case in BASE]
    changed[index][field] = value
    assert version_of(tmp_path, BASE, "a.jsonl") != version_of(tmp_path, changed, "b.jsonl")


def test_version_changes_when_a_case_is_added_removed_or_moved(tmp_path: Path) -> None:
    base = version_of(tmp_path, BASE, "a.jsonl")
    extra = {"id": "c", "input": "q3"}
    assert version_of(tmp_path, [*BASE, extra], "b.jsonl") != base
    assert version_of(tmp_path, BASE[:1], "c.jsonl") != base
    assert version_of(tmp_path, list(reversed(BASE)), "d.jsonl") != base


# --- errors: FILE:LINE: what is wrong -------------------------------------------------------


def test_dataset_format_error_is_an_input_error_with_exit_code_2(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "not json\n"))
    assert isinstance(err, InputError)
    assert err.exit_code == 2


def test_truncated_json_line(tmp_path: Path) -> None:
    path = write(tmp_path, lines({"input": "ok"}) + '{"input": "cut her\n')
    assert_error_at(path, 2, "invalid JSON", "column")


def test_invalid_json_after_blank_lines_names_the_physical_line(tmp_path: Path) -> None:
    path = write(tmp_path, '\n\n{"input": "a"}\n\n{oops}\n')
    assert_error_at(path, 5, "invalid JSON")


@pytest.mark.parametrize(
    ("raw", "kind"),
    [("[1, 2]", "list"), ('"text"', "str"), ("42", "int"), ("null", "NoneType")],
)
def test_a_line_that_is_not_an_object(tmp_path: Path, raw: str, kind: str) -> None:
    path = write(tmp_path, lines({"input": "a"}, {"input": "b"}) + raw + "\n")
    assert_error_at(path, 3, "must be a JSON object", kind)


def test_missing_input(tmp_path: Path) -> None:
    path = write(tmp_path, lines({"input": "a"}, {"id": "x", "expected": "4"}))
    assert_error_at(path, 2, '"input" is missing')


def test_null_input(tmp_path: Path) -> None:
    path = write(tmp_path, lines({"input": None}))
    assert_error_at(path, 1, '"input" is missing')


@pytest.mark.parametrize("bad_id", [True, False, ["a"], {"a": 1}, 1.5, ""])
def test_bad_id_type(tmp_path: Path, bad_id: Any) -> None:
    path = write(tmp_path, lines({"input": "a"}, {"id": bad_id, "input": "b"}))
    assert_error_at(path, 2, '"id" must be a non-empty string or an integer')


@pytest.mark.parametrize("metadata", [["a"], "tag", 3, True])
def test_metadata_not_an_object(tmp_path: Path, metadata: Any) -> None:
    path = write(tmp_path, lines({"input": "a", "metadata": metadata}))
    assert_error_at(path, 1, '"metadata" must be an object')


@pytest.mark.parametrize("assertions", [{"type": "contains"}, "contains", 1])
def test_assertions_not_a_list(tmp_path: Path, assertions: Any) -> None:
    path = write(tmp_path, lines({"input": "a", "assertions": assertions}))
    assert_error_at(path, 1, '"assertions" must be a list')


@pytest.mark.parametrize(
    ("assertions", "index"),
    [
        ([{"value": "x"}], 0),
        ([{"type": "contains"}, {"value": "x"}], 1),
        ([{"type": "contains"}, "regex"], 1),
        ([{"type": 3}], 0),
    ],
)
def test_assertion_without_a_type(tmp_path: Path, assertions: list[Any], index: int) -> None:
    path = write(tmp_path, lines({"input": "a"}, {"input": "b", "assertions": assertions}))
    assert_error_at(path, 2, f"assertions[{index}]", '"type"')


def test_unknown_field_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, lines({"input": "a"}, {"input": "b", "expeted": "typo"}))
    message = assert_error_at(path, 2, 'unknown field "expeted"')
    assert "expected" in message.split("allowed:", 1)[1]


def test_duplicate_id_names_the_first_line(tmp_path: Path) -> None:
    cases = [{"id": "q", "input": "a"}, {"input": "b"}, {"id": "q", "input": "c"}]
    path = write(tmp_path, lines(*cases))
    assert_error_at(path, 3, "duplicate id 'q'", "first on line 1")


def test_int_and_str_id_with_the_same_text_are_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path, lines({"id": 5, "input": "a"}, {"id": "5", "input": "b"}))
    assert_error_at(path, 2, "duplicate id '5'", "first on line 1")


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"input": "a"}\n{"input": "caf\xff"}\n')
    assert_error_at(path, 2, "not valid UTF-8", "0xff", "column 15")


def test_non_utf8_bytes_alone_on_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xff\n")
    assert_error_at(path, 1, "not valid UTF-8", "0xff")


def test_a_line_longer_than_max_line_bytes(tmp_path: Path) -> None:
    long_line = '{"input": "' + "a" * (5000 - 13) + '"}'
    assert len(long_line.encode()) == 5000
    path = write(tmp_path, lines({"input": "ok"}) + long_line + "\n")
    assert_error_at(path, 2, "longer than 1024 bytes")


def test_a_50mb_line_is_rejected_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    chunk = b"a" * (1024 * 1024)
    with path.open("wb") as f:
        f.write(b'{"input": "')
        for _ in range(50):
            f.write(chunk)
        f.write(b'"}\n{"input": "b"}\n')
    assert path.stat().st_size > 50 * 1024 * 1024

    tracemalloc.start()
    try:
        err = load_error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(err).startswith(f"{path}:1: line longer than 1024 bytes")
    assert peak < 5 * 1024 * 1024, f"peak Python memory {peak} bytes: the line was read whole"


@pytest.mark.parametrize("content", [b"", b"\n\n   \n", b"\r\n"])
def test_an_empty_file(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, content)
    err = load_error(path)
    assert err.line is None
    assert str(err) == f"{path}: no test cases (the file is empty)"


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    err = load_error(path)
    assert err.line is None
    assert str(err).startswith(f"{path}: cannot read the file")
    assert "No such file" in str(err)


def test_a_directory_instead_of_a_file(tmp_path: Path) -> None:
    err = load_error(tmp_path)
    assert str(err).startswith(f"{tmp_path}: cannot read the file")


def test_the_first_problem_is_reported_even_if_later_lines_are_bad_too(tmp_path: Path) -> None:
    path = write(tmp_path, lines({"input": "a"}, {"x": 1}) + "garbage\n")
    assert_error_at(path, 2, 'unknown field "x"')


# --- bugs found while writing these tests ---------------------------------------------------


def test_crlf_line_of_exactly_max_bytes_keeps_later_line_numbers(tmp_path: Path) -> None:
    prefix, suffix = '{"input": "', '"}'
    line = prefix + "a" * (MAX - len(prefix) - len(suffix)) + suffix
    path = write(tmp_path, (line + "\r\n" + '{"input": "b"}\r\n').encode())
    items = load_dataset_file(path, max_line_bytes=MAX).items
    assert [i["position"] for i in items] == [1, 2]


def test_lone_surrogate_escape_is_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"input": "a"}\n{"input": "\\ud800"}\n')
    assert_error_at(path, 2, "input: ", "lone surrogate (\\ud800)")


# --- what the database cannot store: refused at validation, field named ---------------------


@pytest.mark.parametrize("line, field, words", [
    (r'{"input": "a\u0000b"}', "input", ["NUL character (\\u0000)", "cannot store"]),
    (r'{"input": "q", "expected": ["x", {"t": "\u0000"}]}', "expected[1].t", ["NUL"]),
    (r'{"input": "q", "metadata": {"tag\udc00": 1}}', "metadata", ["object key",
                                                                   "lone surrogate"]),
    (r'{"input": "q", "metadata": {"a b": "\udfff"}}', 'metadata["a b"]', ["\\udfff"]),
    (r'{"id": "x\u0000", "input": "q"}', "id", ["NUL"]),
    (r'{"input": "q", "expected": NaN}', "expected", ["NaN or infinity"]),
    (r'{"input": "q", "expected": -Infinity}', "expected", ["NaN or infinity"]),
    (r'{"input": 1e400}', "input", ["infinity"]),
    (r'{"input": "q", "colour\u0000": 1}', "", ["a field name contains a NUL"]),
    (r'{"input_config": {"value": "q\ud800"}, "testcase": "t"}', "input_config.value",
     ["lone surrogate"]),
])
def test_what_the_database_cannot_store_names_line_and_field(
        tmp_path: Path, line: str, field: str, words: list[str]) -> None:
    path = write(tmp_path, '{"input": "fine"}\n' + line + "\n")
    message = assert_error_at(path, 2, *words)
    assert message.startswith(f"{path}:2: {field}: " if field else f"{path}:2: a field")
    message.encode("ascii")  # the hostile text is escaped, never printed as itself


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_nesting_up_to_the_limit_is_kept_and_one_more_level_refused(tmp_path: Path) -> None:
    deep = nested(MAX_JSON_DEPTH)
    parsed = load_dataset_file(write(tmp_path, lines({"input": deep})), max_line_bytes=MAX)
    assert parsed.items[0]["input"] == deep
    path = write(tmp_path, lines({"input": "ok"}, {"input": "q", "expected": nested(65)}))
    message = assert_error_at(path, 2, "expected", "deeper than 64 levels")
    assert "(...)" in message  # a deep path is shortened


def test_500_levels_of_nesting_is_a_format_error_naming_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, '{"input": ' + "[" * 500 + "]" * 500 + "}\n")
    assert_error_at(path, 1, "input[0]", "deeper than 64", max_line_bytes=1024 * 1024)


@pytest.mark.parametrize("name, words", [
    ("n" * 192, ["the dataset name", "longer than 191"]),
    ("a\x00b", ["the dataset name", "NUL"]),
    ("a\udcff", ["the dataset name", "lone surrogate"]),
])
def test_a_name_the_database_cannot_store_is_refused(tmp_path: Path, name: str,
                                                      words: list[str]) -> None:
    path = write(tmp_path, lines({"input": "q"}))
    with pytest.raises(DatasetFormatError) as info:
        load_dataset_file(path, max_line_bytes=MAX, name=name)
    for word in words:
        assert word in str(info.value)


def test_huge_integer_literal_is_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path, '{"input": ' + "1" * 5000 + "}\n")
    assert_error_at(path, 1, max_line_bytes=1024 * 1024)


def test_deeply_nested_json_is_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path, '{"input": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert_error_at(path, 1, "deeper than 64", max_line_bytes=1024 * 1024)


def test_distinct_long_ids_are_not_reported_as_duplicates(tmp_path: Path) -> None:
    a, b = "x" * 250 + "1", "x" * 250 + "2"
    path = write(tmp_path, lines({"id": a, "input": "a"}, {"id": b, "input": "b"}))
    try:
        parsed = load_dataset_file(path, max_line_bytes=MAX)
    except DatasetFormatError as err:  # rejecting an over-long id would be fine too
        assert "duplicate" not in str(err), str(err)[:120]
    else:
        assert len({i["key"] for i in parsed.items}) == 2


# --- fuzz: nothing but DatasetFormatError escapes -------------------------------------------

# >4300-digit integers and 100,000 levels of nesting have their own tests above.
hostile_text = st.lists(st.characters() | st.sampled_from(["\x00", "\ud800", "\udfff"]),
                        max_size=6).map("".join)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.text(max_size=20)
    | hostile_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | hostile_text, inner, max_size=4)
    ),
    max_leaves=12,
) | st.integers(MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH + 1).map(nested)
# Mostly-valid cases, so that the success path (ids, duplicates, version) is fuzzed too.
case_like = st.fixed_dictionaries(
    {"input": json_values},
    optional={
        "id": st.integers(min_value=-5, max_value=5) | st.text(max_size=3) | json_values,
        "expected": json_values,
        "metadata": st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values,
        "assertions": st.lists(
            st.fixed_dictionaries({"type": st.text(max_size=5)}, optional={"value": json_values}),
            max_size=3,
        )
        | json_values,
    },
)
fuzz_settings = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def load_or_format_error(path: Path, max_line_bytes: int) -> None:
    try:
        parsed = load_dataset_file(path, max_line_bytes=max_line_bytes)
    except DatasetFormatError as err:
        assert str(err).startswith(str(path))
        return
    assert parsed.items
    assert len({i["key"] for i in parsed.items}) == len(parsed.items)
    assert all(i["input"] is not None for i in parsed.items)
    # What was accepted, PostgreSQL can store: no NUL, valid Unicode, finite numbers.
    text = json.dumps(list(parsed.items), ensure_ascii=False, allow_nan=False)
    assert "\\u0000" not in text
    text.encode("utf-8")


@fuzz_settings
@given(data=st.binary(max_size=2000), max_line_bytes=st.sampled_from([1, 16, 1024]))
def test_fuzz_arbitrary_bytes(tmp_path: Path, data: bytes, max_line_bytes: int) -> None:
    load_or_format_error(write(tmp_path, data), max_line_bytes)


@fuzz_settings
@given(values=st.lists(json_values | case_like, max_size=8))
def test_fuzz_arbitrary_json_lines(tmp_path: Path, values: list[Any]) -> None:
    load_or_format_error(write(tmp_path, lines(*values)), MAX)
