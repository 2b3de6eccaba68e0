"""Prompt sets for :class:`~cdb.environments.llm.LLMDuel`: the contexts ``x`` of tier 3.

A :class:`PromptSet` is an immutable, hashable tuple of prompt strings with a name. Three sources::

    PromptSet.builtin("reviews")                          # ships with the package (train split)
    PromptSet.builtin("reviews", split="eval")            # its held-out prompts, kept apart
    PromptSet.from_jsonl("prompts.jsonl", field="prompt")  # one JSON object per line
    PromptSet.from_hf_dataset("my_dataset/", field="prompt", split="train")   # a local HF dataset folder

The built-in ``"reviews"`` set (128 training and 32 held-out prompts, at most 60 characters each,
written for this project) asks for short reviews and accounts of films, books, meals, trips,
products and events: open-ended requests whose answer can be positive or negative, as in the
controlled-sentiment task of the DPO paper (Rafailov et al. 2023, §6.1). No subject of a
held-out prompt appears in a training prompt.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.resources
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

BUILTIN = ("reviews",)
"""Names of the prompt sets that ship with the package (``PromptSet.builtin``)."""

SPLITS = ("train", "eval")

_DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """An ordered, immutable set of prompt strings.

    Attributes:
      texts: the prompts (a tuple of non-empty strings; a list is converted).
      name: a label recorded in a run's configuration.
      size: ``len(texts)`` (derived).
      fingerprint: the first 12 hex digits of the SHA-256 of the prompts (derived), so that a
        run's configuration, and a checkpoint's check on resume, tell prompt sets apart.
    """

    texts: tuple[str, ...] = dataclasses.field(repr=False)
    name: str = "prompts"
    size: int = dataclasses.field(init=False)
    fingerprint: str = dataclasses.field(init=False)

    def __post_init__(self):
        if isinstance(self.texts, str) or not isinstance(self.texts, Iterable):
            raise ValueError(f"PromptSet.texts={self.texts!r:.80} is not allowed; expected a list of strings")
        texts = tuple(self.texts)
        if not texts:
            raise ValueError(f"PromptSet.texts of {self.name!r} is empty; expected at least one prompt")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(
                    f"PromptSet.texts[{i}]={text!r:.80} of {self.name!r} is not allowed; expected a non-empty string"
                )
        digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "size", len(texts))
        object.__setattr__(self, "fingerprint", digest)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> str:
        return self.texts[index]

    def __iter__(self):
        return iter(self.texts)

    # --- sources -----------------------------------------------------------------------------

    @classmethod
    def builtin(cls, name: str = "reviews", split: str = "train") -> PromptSet:
        """A prompt set that ships with the package: ``name`` in :data:`BUILTIN`, ``split`` in
        ``('train', 'eval')`` (the held-out prompts used for evaluation)."""
        if name not in BUILTIN:
            raise ValueError(f"PromptSet.builtin: name={name!r} is not allowed; expected one of {BUILTIN}")
        if split not in SPLITS:
            raise ValueError(f"PromptSet.builtin: split={split!r} is not allowed; expected one of {SPLITS}")
        resource = importlib.resources.files(__package__).joinpath("data", f"{name}_{split}.jsonl")
        with importlib.resources.as_file(resource) as path:
            texts = _read_jsonl(Path(path), "prompt")
        return cls(tuple(texts), name=f"{name}/{split}")

    @classmethod
    def from_jsonl(cls, path: str | Path, field: str = "prompt", *, name: str | None = None) -> PromptSet:
        """Prompts from a JSON-lines file: the string ``field`` of each line's object (blank lines skipped)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"PromptSet.from_jsonl: no file at {str(path)!r}; expected a JSON-lines file")
        return cls(tuple(_read_jsonl(path, field)), name=name or path.stem)

    @classmethod
    def from_hf_dataset(
        cls, folder: str | Path, field: str = "prompt", split: str = "train", *, name: str | None = None
    ) -> PromptSet:
        """Prompts from a local Hugging Face dataset folder (nothing is downloaded).

        Two layouts are read:

        * data files, as on the Hub or written by ``Dataset.to_json`` / ``to_csv`` / ``to_parquet``:
          ``<folder>/<split>.jsonl``, ``<folder>/data/<split>-00000-of-00001.jsonl``,
          ``<folder>/<split>/*.jsonl`` (also ``.json``, ``.csv``, ``.parquet``), read with the
          standard library (``.parquet`` needs ``pyarrow``);
        * a ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder (Arrow files with
          ``state.json`` or ``dataset_dict.json``), read with ``datasets.load_from_disk``; this
          needs the ``datasets`` package (``pip install datasets``).

        Args:
          folder: the dataset folder.
          field: the column holding the prompt strings.
          split: the split to read (``'train'``, ``'test'``, ...); ignored for a single saved
            ``Dataset``.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"PromptSet.from_hf_dataset: no folder at {str(folder)!r}; expected a local dataset folder"
            )
        label = name or f"{folder.name}/{split}"
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            return cls(tuple(_load_saved_dataset(folder, field, split)), name=label)
        files = _split_files(folder, split)
        texts: list[str] = []
        for file in files:
            texts.extend(_read_data_file(file, field))
        return cls(tuple(texts), name=label)

    # --- splitting ---------------------------------------------------------------------------

    def hold_out(self, count: int, seed: int = 0) -> tuple[PromptSet, PromptSet]:
        """``(rest, held_out)``: ``count`` prompts drawn at random (numpy ``seed``) and kept apart.

        Both keep the original order of their prompts.
        """
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count < len(self):
            raise ValueError(
                f"PromptSet.hold_out: count={count!r} is out of range; expected an integer >= 1 and < {len(self)}"
            )
        chosen = np.zeros(len(self), bool)
        chosen[np.random.default_rng(seed).permutation(len(self))[:count]] = True
        rest = tuple(t for t, c in zip(self.texts, chosen, strict=True) if not c)
        held = tuple(t for t, c in zip(self.texts, chosen, strict=True) if c)
        return PromptSet(rest, name=f"{self.name}/rest"), PromptSet(held, name=f"{self.name}/held_out")


def _field_value(record, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a {type(record).__name__}, not a JSON object with the field {field!r}")
    if field not in record:
        raise ValueError(f"{where} has no field {field!r}; its fields are {sorted(record)}")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{where} field {field!r} is {value!r:.80}; expected a string")
    return value


def _read_text(path: Path) -> str:
    """A data file's text; a ``ValueError`` naming the file and the line if it is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line} is not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8 FILE > NEW_FILE, or Python's open(..., encoding='utf-8') when writing it)"
        ) from None


def _read_jsonl(path: Path, field: str) -> list[str]:
    texts = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number} is not valid JSON ({exc.msg}): {line.strip()[:80]!r}") from None
        texts.append(_field_value(record, field, f"{path}: line {number}"))
    return texts


def _read_data_file(path: Path, field: str) -> list[str]:
    suffix = path.suffix
    if suffix == ".jsonl":
        return _read_jsonl(path, field)
    if suffix == ".json":
        text = _read_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:  # Dataset.to_json writes JSON lines under a .json name
            return _read_jsonl(path, field)
        if isinstance(data, dict) and field in data and isinstance(data[field], list):  # columnar
            data = [{field: v} for v in data[field]]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records or JSON lines; got a {type(data).__name__}")
        return [_field_value(r, field, f"{path}: record {i}") for i, r in enumerate(data)]
    if suffix == ".csv":
        rows = csv.DictReader(io.StringIO(_read_text(path), newline=""))
        return [_field_value(r, field, f"{path}: row {i + 2}") for i, r in enumerate(rows)]
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ModuleNotFoundError(
                f"{path} is a Parquet file, which needs pyarrow: pip install pyarrow "
                "(or export the dataset with Dataset.to_json)"
            ) from None
        table = pq.read_table(path)
        if field not in table.column_names:
            raise ValueError(f"{path} has no column {field!r}; its columns are {table.column_names}")
        return [_field_value({field: v}, field, f"{path}: row {i}") for i, v in enumerate(table[field].to_pylist())]
    raise ValueError(f"{path}: unsupported data file; expected one of {_DATA_EXTENSIONS}")


def _split_files(folder: Path, split: str) -> list[Path]:
    """Data files of ``split`` in ``folder``, in the Hub's layouts (see ``from_hf_dataset``)."""
    for ext in _DATA_EXTENSIONS:
        candidates = (
            [folder / f"{split}{ext}"]
            + sorted((folder / "data").glob(f"{split}-*{ext}"))
            + sorted((folder / "data").glob(f"{split}{ext}"))
            + sorted((folder / split).glob(f"*{ext}"))
        )
        found = [p for p in candidates if p.is_file()]
        if found:
            return found
    present = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.suffix in _DATA_EXTENSIONS
    )
    raise FileNotFoundError(
        f"PromptSet.from_hf_dataset: found no data files of split={split!r} in {str(folder)!r}; looked for "
        f"{split}.jsonl, data/{split}-*.jsonl and {split}/*.jsonl (and .json, .csv, .parquet); "
        f"data files present: {present or 'none'}"
    )


def _load_saved_dataset(folder: Path, field: str, split: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise ModuleNotFoundError(
            f"{str(folder)!r} was written by datasets' save_to_disk (Arrow files), which needs the datasets "
            "package: pip install datasets. Or export it once with Dataset.to_json('<split>.jsonl') and "
            "read that file with PromptSet.from_jsonl or from_hf_dataset."
        ) from None
    data = datasets.load_from_disk(str(folder))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(
                f"PromptSet.from_hf_dataset: split={split!r} is not in {str(folder)!r}; its splits are {list(data)}"
            )
        data = data[split]
    if field not in data.column_names:
        raise ValueError(f"{str(folder)!r} has no column {field!r}; its columns are {data.column_names}")
    return [_field_value({field: v}, field, f"{folder}: row {i}") for i, v in enumerate(data[field])]
