"""The labelled file `del-client evaluate` reads: what it accepts and how it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from del_client.errors import RequestOptionError
from del_client.evaluation import read_labelled, resolve_labels

LABELS = ("negative", "positive")


def _resolved(tmp_path: Path, text: str, labels=LABELS):
    path = tmp_path / "rows.tsv"
    path.write_text(text, encoding="utf-8")
    return resolve_labels(read_labelled(path), labels, path)


def test_labels_are_names_or_indices_and_a_header_is_skipped(tmp_path):
    labelled = _resolved(
        tmp_path, "sentence\tlabel\na fine film \t1\n\nbleak\tnegative\nit 's\tok\t0\n"
    )
    assert labelled.header == "sentence\tlabel"
    assert labelled.examples == [
        ("a fine film", "positive"),
        ("bleak", "negative"),
        ("it 's\tok", "negative"),  # the label is after the last tab
    ]


def test_a_first_row_with_a_label_is_data_not_a_header(tmp_path):
    labelled = _resolved(tmp_path, "\ufeffgood\t1\nbad\t0\n")  # a byte-order mark is no text
    assert (labelled.header, labelled.examples) == (
        None,
        [("good", "positive"), ("bad", "negative")],
    )


def test_a_first_row_with_a_number_out_of_range_is_an_error_not_a_header(tmp_path):
    with pytest.raises(RequestOptionError, match=r"rows.tsv:1: label '7'"):
        _resolved(tmp_path, "good\t7\nbad\t0\n")


def test_labels_that_are_numbers_are_read_as_names_not_indices(tmp_path):
    labelled = _resolved(tmp_path, "awful\t1\nsplendid\t5\n", labels=("1", "2", "3", "4", "5"))
    assert labelled.examples == [("awful", "1"), ("splendid", "5")]


def test_an_unknown_label_names_its_line_and_the_server_labels(tmp_path):
    with pytest.raises(RequestOptionError, match=r"rows.tsv:3: label '2' .*negative, positive"):
        _resolved(tmp_path, "text\tlabel\ngood\t1\nbad\t2\n")


@pytest.mark.parametrize("text", ["no tab here\n", "\t1\n"])
def test_a_row_without_text_or_label_is_refused(tmp_path, text):
    with pytest.raises(RequestOptionError, match="expected text<TAB>label"):
        _resolved(tmp_path, text)


@pytest.mark.parametrize("text", ["good film\tmaybe\n", "x\t\u00b2\n"])
def test_a_file_of_only_a_header_is_refused_saying_so(tmp_path, text):
    with pytest.raises(RequestOptionError, match="no labelled rows after the header line"):
        _resolved(tmp_path, text)


def test_an_empty_or_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(RequestOptionError, match="no labelled rows"):
        _resolved(tmp_path, "\n\n")
    with pytest.raises(RequestOptionError, match="cannot read"):
        read_labelled(tmp_path / "absent.tsv")
