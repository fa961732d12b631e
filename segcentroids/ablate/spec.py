"""The ablation file: `load_ablation` reads and validates it into an `Ablation` (format in docs/ablations.md).

Every check is a small function of its own; each error names the file and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

KEYS = {"title", "base", "overrides", "baseline", "seeds", "metrics", "rows", "paper", "evaluate", "ckpt", "slurm"}
REQUIRED = ("title", "base", "rows")
EVALUATE_SPLIT = {"validate": "val", "test": "test"}
ROW_KEYS = {"name", "overrides", "baseline"}


class AblationFormatError(ValueError):
    """An ablation file that does not follow the format; the message names the file and the key."""


@dataclass
class Row:
    name: str
    overrides: list[str]
    slug: str
    baseline: str | None = None  # the row its deltas are measured against (None: the table's `baseline`)


@dataclass
class Ablation:
    """A parsed, validated ablation file."""

    path: Path
    title: str
    base: list[str]
    overrides: list[str]
    baseline: str
    seeds: list[int]
    metrics: list[str]
    rows: list[Row]
    paper: dict[str, dict[str, float]]
    evaluate: str
    ckpt: str
    slurm: dict = field(default_factory=dict)

    def row(self, name: str) -> Row:
        for row in self.rows:
            if name in (row.name, row.slug):
                return row
        raise AblationFormatError(f"{self.path}: no row named {name!r} (rows: {[r.name for r in self.rows]})")


def slugify(name: str) -> str:
    """File-system-safe folder name of a row (`+ MT + LS` -> `mt-ls`, `tau=0.1` -> `tau-0.1`)."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-.").lower()
    return slug or "row"


def load_ablation(path: str | Path, check_files: bool = True) -> Ablation:
    """Read and validate an ablation file; errors name the file and the key (see docs/ablations.md)."""
    path = Path(path)
    data = _read_mapping(path)
    base = _base(data["base"], path, check_files)
    overrides = _string_list(data.get("overrides"), f"{path}: 'overrides'", options=True)
    rows = _rows(data["rows"], path)
    names = [row.name for row in rows]
    baseline = _baseline(data, rows, path)
    seeds = _seeds(data.get("seeds", [0]), path)
    metrics, evaluate = _metrics_and_evaluate(data, path)
    ckpt = _ckpt(data.get("ckpt", "last"), path)
    paper = _paper(data.get("paper") or {}, names, metrics, path)
    slurm = _slurm(data.get("slurm") or {}, path)
    return Ablation(path, data["title"], base, overrides, baseline, seeds, metrics, rows, paper, evaluate, ckpt,
                    slurm)


# ---------------------------------------------------------------------------------------------- the checks
def _read_mapping(path: Path) -> dict:
    """The file's YAML mapping, with only known keys, the required ones present and a title."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise AblationFormatError(f"{path}: cannot read: {error}") from error
    if not isinstance(data, dict):
        raise AblationFormatError(f"{path}: must be a mapping with keys {sorted(KEYS)}")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise AblationFormatError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(KEYS)}")
    for key in REQUIRED:
        if key not in data:
            raise AblationFormatError(f"{path}: missing key '{key}'")
    if not isinstance(data["title"], str) or not data["title"].strip():
        raise AblationFormatError(f"{path}: 'title' must be a non-empty string")
    return data


def _string_list(value: object, where: str, *, options: bool = False) -> list[str]:
    """`value` as a list of strings (a single string is a list of one); `options`: each must start with `--`."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AblationFormatError(f"{where} must be a list of strings, got {value!r}")
    if options:
        for v in value:
            if not v.startswith("--"):
                raise AblationFormatError(f"{where}: {v!r} is not a command-line argument (must start with '--')")
    return list(value)


def _find_file(path: str, ablation_file: Path) -> Path | None:
    """`path` as given (relative to the working directory) or relative to an ancestor of the ablation file."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    for root in (Path.cwd(), *ablation_file.resolve().parents):
        if (root / candidate).is_file():
            return root / candidate
    return None


def _base(value: object, path: Path, check_files: bool) -> list[str]:
    """The base config files; with `check_files`, each found (as given or next to the ablation file)."""
    base = _string_list(value, f"{path}: 'base'")
    if not base:
        raise AblationFormatError(f"{path}: 'base' must name at least one config file")
    if check_files:
        for i, name in enumerate(base):
            found = _find_file(name, path)
            if found is None:
                raise AblationFormatError(f"{path}: base[{i}]: config file {name!r} not found")
            base[i] = name if Path(name).is_file() else str(found)
    return base


def _row(raw: object, i: int, path: Path) -> Row:
    if not isinstance(raw, dict) or "name" not in raw:
        raise AblationFormatError(f"{path}: rows[{i}] must be a mapping with 'name' and 'overrides', got {raw!r}")
    extra = sorted(set(raw) - ROW_KEYS)
    if extra:
        raise AblationFormatError(f"{path}: rows[{i}] ({raw['name']!r}): unknown key(s) {extra}")
    name = str(raw["name"])
    overrides = _string_list(raw.get("overrides"), f"{path}: rows[{i}] ({name!r}) 'overrides'", options=True)
    baseline = raw.get("baseline")
    return Row(name, overrides, slugify(name), None if baseline is None else str(baseline))


def _rows(value: object, path: Path) -> list[Row]:
    """The rows, each with a name and a folder slug of its own."""
    if not isinstance(value, list) or not value:
        raise AblationFormatError(f"{path}: 'rows' must be a non-empty list of {{name, overrides}}")
    rows = [_row(raw, i, path) for i, raw in enumerate(value)]
    for key in ("name", "slug"):
        seen: dict[str, str] = {}
        for row in rows:
            value = getattr(row, key)
            if value in seen:
                raise AblationFormatError(
                    f"{path}: rows {seen[value]!r} and {row.name!r} have the same {key} {value!r}")
            seen[value] = row.name
    return rows


def _baseline(data: dict, rows: list[Row], path: Path) -> str:
    """The table's baseline row (default: the first); every row's own baseline must be a row too."""
    names = [row.name for row in rows]
    baseline = str(data.get("baseline", names[0]))
    if baseline not in names:
        raise AblationFormatError(f"{path}: 'baseline' {baseline!r} is not a row name; rows: {names}")
    for i, row in enumerate(rows):
        if row.baseline is not None and row.baseline not in names:
            raise AblationFormatError(f"{path}: rows[{i}] ({row.name!r}) 'baseline' {row.baseline!r} is not a row "
                                      f"name; rows: {names}")
    return baseline


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seeds(seeds: object, path: Path) -> list[int]:
    if _is_int(seeds):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
        raise AblationFormatError(f"{path}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    return [int(s) for s in seeds]


def _metrics_and_evaluate(data: dict, path: Path) -> tuple[list[str], str]:
    """The reported metrics (default: mIoU and mAcc of the evaluated split) and the evaluation command (default:
    the one of the first metric's split)."""
    evaluate = data.get("evaluate")
    metrics = _string_list(data.get("metrics"), f"{path}: 'metrics'")
    if evaluate is not None and evaluate not in EVALUATE_SPLIT:
        raise AblationFormatError(f"{path}: 'evaluate' must be 'test' or 'validate', got {evaluate!r}")
    if not metrics:
        split = EVALUATE_SPLIT[evaluate or "test"]
        metrics = [f"{split}/mIoU", f"{split}/mAcc"]
    for metric in metrics:
        split, _, name = metric.partition("/")
        if split not in EVALUATE_SPLIT.values() or not name:
            raise AblationFormatError(f"{path}: metric {metric!r} must be 'val/<name>' or 'test/<name>'")
    if evaluate is None:  # evaluate the split the table reports
        evaluate = "validate" if metrics[0].startswith("val/") else "test"
    return metrics, evaluate


def _ckpt(ckpt: object, path: Path) -> str:
    if ckpt not in ("last", "best"):
        raise AblationFormatError(f"{path}: 'ckpt' must be 'last' or 'best', got {ckpt!r}")
    return ckpt


def _paper_row(row_name: object, value: object, metrics: list[str], path: Path) -> dict[str, float]:
    """One row's paper numbers as {metric: number} (a bare number is the first metric's)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = {metrics[0]: value}
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) for v in value.values()):
        raise AblationFormatError(f"{path}: paper: {row_name!r} must be a number or {{metric: number}}, "
                                  f"got {value!r}")
    for metric in value:
        if metric not in metrics:
            raise AblationFormatError(f"{path}: paper: {row_name!r}: metric {metric!r} is not in 'metrics' "
                                      f"{metrics}")
    return {k: float(v) for k, v in value.items()}


def _paper(raw: object, names: list[str], metrics: list[str], path: Path) -> dict[str, dict[str, float]]:
    """The paper's numbers per row name."""
    if not isinstance(raw, dict):
        raise AblationFormatError(f"{path}: 'paper' must map row names to numbers or to {{metric: number}}")
    paper: dict[str, dict[str, float]] = {}
    for row_name, value in raw.items():
        if str(row_name) not in names:
            raise AblationFormatError(f"{path}: paper: {row_name!r} is not a row name; rows: {names}")
        paper[str(row_name)] = _paper_row(row_name, value, metrics, path)
    return paper


def _slurm(slurm: object, path: Path) -> dict:
    if not isinstance(slurm, dict):
        raise AblationFormatError(f"{path}: 'slurm' must be a mapping of sbatch options (plus 'setup': [lines])")
    if "setup" in slurm:
        _string_list(slurm["setup"], f"{path}: slurm.setup")
    return slurm
