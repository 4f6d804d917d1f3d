"""split_statements: the runner's SQL splitter (statement positions drive error messages)."""

import re

import pytest

from restobot.remote.migrate.lexer import split_statements


def texts(sql):
    return [s.text for s in split_statements(sql)]


def test_splits_at_top_level_semicolons():
    assert texts("CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n") == [
        "CREATE TABLE a (id int)",
        "CREATE TABLE b (id int)",
    ]


def test_keeps_a_last_statement_without_semicolon():
    assert texts("SELECT 1;\nSELECT 2\n") == ["SELECT 1", "SELECT 2"]


def test_semicolon_inside_a_string_does_not_split():
    assert texts("INSERT INTO t VALUES ('a;b', 'it''s;');SELECT 1;") == [
        "INSERT INTO t VALUES ('a;b', 'it''s;')",
        "SELECT 1",
    ]


def test_backslash_escaped_quote_in_e_string_does_not_end_it():
    assert texts(r"SELECT E'a\';b';SELECT 2;") == [r"SELECT E'a\';b'", "SELECT 2"]


def test_backslash_in_standard_string_is_literal():
    assert texts("SELECT 'C:\\';SELECT 2;") == ["SELECT 'C:\\'", "SELECT 2"]


def test_dollar_quoted_function_body_is_one_statement():
    sql = "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\nBEGIN\n  RETURN 1;\nEND;\n$body$;\nSELECT f();\n"
    result = texts(sql)
    assert len(result) == 2
    assert result[0].endswith("$body$") and "RETURN 1;" in result[0]


def test_anonymous_dollar_quote_with_semicolons():
    assert texts("DO $$ BEGIN PERFORM 1; END $$;SELECT 1;") == ["DO $$ BEGIN PERFORM 1; END $$", "SELECT 1"]


def test_positional_parameter_is_not_a_dollar_quote():
    assert texts("PREPARE p AS SELECT $1;SELECT 2;") == ["PREPARE p AS SELECT $1", "SELECT 2"]


def test_semicolon_in_quoted_identifier_does_not_split():
    assert texts('CREATE TABLE "a;b" (id int);SELECT 1;') == ['CREATE TABLE "a;b" (id int)', "SELECT 1"]


def test_semicolon_in_comments_does_not_split():
    sql = "-- header; comment\nSELECT 1 /* a; /* nested; */ still; */ + 1;\n-- trailing;\n"
    assert texts(sql) == ["SELECT 1 /* a; /* nested; */ still; */ + 1"]


def test_comment_only_chunks_are_dropped():
    assert texts("-- only a comment\n;\n/* and another */;\n") == []


def test_statement_line_and_offset_point_at_its_first_code_character():
    sql = "-- header\n\nSELECT 1;\n  -- note\n  SELECT\n  2;\n"
    first, second = split_statements(sql)
    assert (first.line, sql[first.offset:first.offset + 6]) == (3, "SELECT")
    assert (second.line, sql[second.offset:second.offset + 6]) == (5, "SELECT")


@pytest.mark.parametrize(
    "sql, what",
    [
        ("SELECT 'open;", "unterminated quoted string"),
        ('SELECT "open;', "unterminated quoted identifier"),
        ("DO $x$ BEGIN END;", "unterminated dollar-quoted string $x$"),
        ("SELECT 1 /* open", "unterminated /* comment"),
    ],
)
def test_unterminated_quotes_and_comments_are_errors(sql, what):
    with pytest.raises(ValueError, match=re.escape(what)):
        split_statements(sql)
