"""Data loading and validation: every refusal names the file, the column or row, and the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedshield.common.data import load_builtin, load_dataset
from fedshield.common.errors import DataError
from fedshield.common.splits import check_batch_fits, partition, split_holdout, take


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_each_format_loads_with_custom_columns_and_string_labels(tmp_path, suffix):
    frame = pd.DataFrame(
        {
            "body": ["good film", "awful plot", "fine", "meh acting", "superb", "dull"],
            "topic": ["pos", "neg", "neutral", "neg", "pos", "neutral"],
        }
    )
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    data = load_dataset(path, "body", "topic")
    assert data.classes == ("neg", "neutral", "pos")
    assert data.labels.tolist() == [2, 0, 1, 0, 2, 1]
    assert len(data.fingerprint) == 64


def test_integer_labels_sort_numerically(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(12)], "label": [10, 2, 1] * 4}).to_csv(
        path, index=False
    )
    assert load_dataset(path).classes == ("1", "2", "10")


def test_labels_outside_the_federation_classes_are_refused(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "y", "z"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"labels \['z'\] are not among the federation's classes"):
        load_dataset(path, classes=("x", "y"))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file.*--data"):
        load_dataset(tmp_path / "nope.csv")


def test_directory_instead_of_file(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        load_dataset(tmp_path / "d.csv")


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\ncaf\xe9 au lait,1\nok,0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not valid UTF-8 at byte \d+; re-save the file as UTF-8"):
        load_dataset(path)


def test_missing_column_lists_the_columns_and_the_flag(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "b"], "target": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(
        DataError,
        match=r"label column 'label' not found \(columns: text, target\); pass --label-column",
    ):
        load_dataset(path)


def test_empty_text_names_the_row(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["fine", "  ", "ok"], "label": [0, 1, 0]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"row 2, column 'text': empty or missing text"):
        load_dataset(path)


def test_missing_label_names_the_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n{"text": "c", "label": 0}\n'
    )
    with pytest.raises(DataError, match=r"row 2, column 'label': missing label"):
        load_dataset(path)


def test_one_class_is_refused(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "b"], "label": [1, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="has 1 class.*at least two classes"):
        load_dataset(path)


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        load_dataset(empty)
    header = tmp_path / "h.csv"
    header.write_text("text,label\n")
    with pytest.raises(DataError, match="no records"):
        load_dataset(header)


def test_too_small_for_the_batch(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 0]}).to_csv(path, index=False)
    with pytest.raises(
        DataError, match="3 records is fewer than the batch size 64; lower --batch-size"
    ):
        check_batch_fits(load_dataset(path), 64)


def test_builtin_imdb_is_balanced_binary():
    data = load_builtin("imdb")
    assert len(data) == 25_000
    assert data.class_counts() == {"0": 12_500, "1": 12_500}


def test_holdout_and_partitions_are_disjoint_and_cover_the_training_part():
    data = take(load_builtin("rotten-tomatoes"), 2000, seed=0)
    train, test = split_holdout(data, 0.2, seed=0)
    assert len(test) == 400 and len(train) == 1600
    assert not set(train.texts) & set(test.texts)
    for scheme in ("iid", "dirichlet"):
        parts = partition(train, 5, scheme, alpha=0.5, seed=0)
        texts = [t for p in parts for t in p.texts]
        assert sorted(texts) == sorted(train.texts)
        assert len({p.fingerprint for p in parts}) == 5


def test_dirichlet_skews_labels_more_than_iid():
    train, _ = split_holdout(take(load_builtin("imdb"), 4000, seed=0), 0.2, seed=0)

    def spread(parts):
        return np.std([p.labels.mean() for p in parts])

    assert spread(partition(train, 8, "dirichlet", 0.3, 0)) > 3 * spread(
        partition(train, 8, "iid", 0.3, 0)
    )


def test_duplicate_header_names_are_refused_not_renamed(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,text\nhello,1,x\nbye,0,y\n")
    with pytest.raises(DataError, match=r"duplicate column names text; rename them"):
        load_dataset(path)


def test_a_50_mb_single_line_fails_with_a_short_message(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a" * 50_000_000)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert "text column 'text' not found" in str(info.value)
    assert len(str(info.value)) < 500
