"""Tabular NAS-Bench-201 scoring: a results table a user downloaded and converted, looked up by genotype.

The official NAS-Bench-201 / NATS-Bench files are multi-GB pickles, and archlab never unpickles;
convert once with the benchmark's own API, into either format below (keys are NAS-Bench-201 arch
strings such as ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|``):

- CSV with a header holding ``arch`` and a metric column (``accuracy``, or ``valid-accuracy``)::
      arch,accuracy
      |nor_conv_3x3~0|+|...|,91.7

- JSON, either ``{"<arch>": 91.7, ...}``, ``{"<arch>": {"valid-accuracy": 91.7, ...}, ...}``, or a list of
  records as NATS-Bench's API gives them with the arch string added::
      from nats_bench import create
      api = create(None, "tss", fast_mode=True, verbose=False)
      rows = [{"arch": api.arch(i), **api.get_more_info(i, "cifar10-valid", hp="200")} for i in range(len(api))]
      json.dump(rows, open("nb201_cifar10.json", "w"))

Scores are taken as written (NAS-Bench-201 reports percent). ``generate_table`` writes a synthetic
table with a known optimum in the same format, for tests and regret reports.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import numpy as np

from archlab.arch.search_space import (
    CELL_CHOICES,
    NUM_EDGES,
    NUM_OPS,
    GenotypeError,
    all_codes,
    codes_from_indices,
    genotype_from_string,
    genotype_to_string,
    indices_from_codes,
    is_disconnected,
)
from archlab.train.errors import TableError

METRICS = ("accuracy", "valid-accuracy", "valid_accuracy")  # tried in order when no metric is named
__all__ = ["CELL_CHOICES", "Table", "TableError", "generate_table", "genotype_from_string", "genotype_to_string",
           "is_connected", "load_table", "synthetic_scores"]


def is_connected(code) -> bool:
    """Whether some path of non-``none`` edges leads from the input node 0 to the output node 3."""
    return not is_disconnected(code)


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
    """Scores of cell genotypes, indexed densely (NaN where the table has no entry)."""

    scores: np.ndarray  # float64 [5**6]
    source: str

    def __len__(self) -> int:
        return int(np.isfinite(self.scores).sum())

    def score_fn(self, codes, rng_seed: int = 0) -> np.ndarray:
        """Scorer by lookup (``rng_seed`` is unused: a table is deterministic)."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != NUM_EDGES or codes.min(initial=0) < 0 or codes.max(initial=0) >= NUM_OPS:
            raise TableError(f"table {self.source} scores cell codes [P, {NUM_EDGES}] with ops 0..{NUM_OPS - 1}, got shape {codes.shape}")
        scores = self.scores[indices_from_codes(codes, CELL_CHOICES)]
        missing = np.flatnonzero(np.isnan(scores))
        if missing.size:
            raise TableError(f"table {self.source} has no entry for {genotype_to_string(codes[missing[0]])}")
        return scores

    @property
    def optimal_code(self) -> np.ndarray:
        return codes_from_indices(np.asarray([np.nanargmax(self.scores)]), CELL_CHOICES)[0]

    @property
    def optimum(self) -> float:
        return float(np.nanmax(self.scores))

    def regret(self, best_score) -> np.ndarray:
        """How far below the table's optimum a best-found score is (0 means the optimum was found)."""
        return self.optimum - np.asarray(best_score, np.float64)


def load_table(path: str, metric: str | None = None) -> Table:
    """Reads a CSV or JSON table (format in the module docstring); TableError with one line on bad input."""
    if not os.path.isfile(path):
        raise TableError(f"benchmark table {path} does not exist (convert a NAS-Bench-201 download to CSV or JSON first)")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise TableError(f"benchmark table {path} is empty")
    is_json = path.lower().endswith(".json") or (not path.lower().endswith(".csv") and text.lstrip()[0] in "[{")
    rows = _json_rows(path, text, metric) if is_json else _csv_rows(path, text, metric)
    if not rows:
        raise TableError(f"benchmark table {path} has no rows")
    scores = np.full(math.prod(CELL_CHOICES), np.nan)
    for where, arch, value in rows:
        if not isinstance(arch, str):
            raise TableError(f"{path}, {where}: arch must be a string, got {arch!r}")
        try:
            code = genotype_from_string(arch)
        except GenotypeError as e:
            raise TableError(f"{path}, {where}: {e}") from None
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise TableError(f"{path}, {where}: score {value!r} is not a number") from None
        if not math.isfinite(score):
            raise TableError(f"{path}, {where}: score {value!r} is not finite")
        index = indices_from_codes(code[None], CELL_CHOICES)[0]
        if not np.isnan(scores[index]):
            raise TableError(f"{path}, {where}: duplicate entry for {arch}")
        scores[index] = score
    return Table(scores=scores, source=path)


def _pick_metric(path: str, keys, metric: str | None, where: str) -> str:
    candidates = (metric,) if metric else METRICS
    for name in candidates:
        if name in keys:
            return name
    raise TableError(f"{path}, {where}: no {' / '.join(candidates)} field (has {', '.join(map(str, keys))})")


def _csv_rows(path: str, text: str, metric: str | None) -> list:
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader)]
    arch_col = next((h for h in ("arch", "arch_str") if h in header), None)
    if arch_col is None:
        raise TableError(f"{path}: CSV header must hold 'arch' and a score column such as 'accuracy', got {','.join(header)}")
    a, m = header.index(arch_col), header.index(_pick_metric(path, header, metric, "header"))
    rows = []
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise TableError(f"{path}, line {line}: {len(row)} fields, header has {len(header)}")
        rows.append((f"line {line}", row[a].strip(), row[m]))
    return rows


def _json_rows(path: str, text: str, metric: str | None) -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TableError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    rows = []
    if isinstance(data, dict):
        for arch, value in data.items():
            if isinstance(value, dict):
                value = value[_pick_metric(path, value.keys(), metric, f"entry {arch}")]
            rows.append((f"entry {arch}", arch, value))
    elif isinstance(data, list):
        for i, record in enumerate(data):
            if not isinstance(record, dict) or not ({"arch", "arch_str"} & record.keys()):
                raise TableError(f"{path}, record {i}: expected an object with 'arch' and a score, got {str(record)[:60]!r}")
            arch = record.get("arch", record.get("arch_str"))
            rows.append((f"record {i}", arch, record[_pick_metric(path, record.keys(), metric, f"record {i}")]))
    else:
        raise TableError(f"{path}: JSON must be an object {{arch: score}} or a list of records, got {type(data).__name__}")
    return rows


def synthetic_scores(rng_seed: int) -> np.ndarray:
    """Structured percent accuracies for all 15,625 cells: per-edge op effects + small pairwise terms + noise.

    Convolutions help most on average, with per-edge jitter so the optimum is not trivially all-conv;
    cells with no path of non-``none`` edges from input to output score near chance (10%).
    """
    rng = np.random.default_rng(rng_seed)
    E = NUM_EDGES
    effect = np.asarray([-2.0, 0.5, 2.0, 3.0, 0.0]) + rng.normal(0.0, 1.0, (E, NUM_OPS))
    pair = np.triu(np.ones((E, E)), 1)[:, :, None, None] * rng.normal(0.0, 0.3, (E, E, NUM_OPS, NUM_OPS))
    codes = all_codes(CELL_CHOICES)
    edges = np.arange(E)
    acc = 74.0 + effect[edges, codes].sum(1)
    acc += pair[edges[:, None], edges[None, :], codes[:, :, None], codes[:, None, :]].sum((1, 2))
    acc += rng.normal(0.0, 0.1, len(codes))
    connected = ~is_disconnected(codes)
    acc = np.where(connected, acc, 10.0 + rng.normal(0.0, 0.3, len(codes)))
    return np.round(np.clip(acc, 0.0, 100.0), 4)


def generate_table(path: str, rng_seed: int = 0) -> Table:
    """Writes a synthetic table (CSV, or JSON when ``path`` ends in .json) and returns it as loaded."""
    scores = synthetic_scores(rng_seed)
    codes = codes_from_indices(np.arange(len(scores)), CELL_CHOICES)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if path.lower().endswith(".json"):
            json.dump({genotype_to_string(c): float(s) for c, s in zip(codes, scores)}, f)
        else:
            f.write("arch,accuracy\n")
            f.writelines(f"{genotype_to_string(c)},{float(s)!r}\n" for c, s in zip(codes, scores))
    return load_table(path)
