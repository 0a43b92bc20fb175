"""The labelled file `del-client evaluate` reads: what it accepts and how it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from del_client.errors import RequestOptionError
from del_client.evaluation import read_labelled, resolve

LABELS = ("negative", "positive")


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rows.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_labels_are_names_or_indices_and_a_header_is_skipped(tmp_path):
    path = _file(tmp_path, "sentence\tlabel\na fine film \t1\n\nbleak\tnegative\nit 's\tok\t0\n")
    assert resolve(read_labelled(path), LABELS, path) == [
        ("a fine film", "positive"),
        ("bleak", "negative"),
        ("it 's\tok", "negative"),  # the label is after the last tab
    ]


def test_a_first_row_with_a_label_is_data_not_a_header(tmp_path):
    path = _file(tmp_path, "good\t1\nbad\t0\n")
    assert resolve(read_labelled(path), LABELS, path) == [("good", "positive"), ("bad", "negative")]


def test_an_unknown_label_names_its_line_and_the_server_labels(tmp_path):
    path = _file(tmp_path, "text\tlabel\ngood\t1\nbad\t2\n")
    with pytest.raises(RequestOptionError, match=r"rows.tsv:3: label '2' .*negative, positive"):
        resolve(read_labelled(path), LABELS, path)


@pytest.mark.parametrize("text", ["no tab here\n", "\t1\n"])
def test_a_row_without_text_or_label_is_refused(tmp_path, text):
    path = _file(tmp_path, text)
    with pytest.raises(RequestOptionError, match="expected text<TAB>label"):
        read_labelled(path)


def test_a_file_of_only_a_header_is_refused_saying_so(tmp_path):
    path = _file(tmp_path, "good film\tmaybe\n")
    with pytest.raises(RequestOptionError, match="no labelled rows after the header line"):
        resolve(read_labelled(path), LABELS, path)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(RequestOptionError, match="cannot read"):
        read_labelled(tmp_path / "absent.tsv")
