"""Dataset checker: walk a dataset root before any training and report what would go wrong.

For every split: image and label counts against the dataset's expected sizes, unpaired files, unreadable files,
image/label size mismatches, stored label values the dataset's rule does not define, and a per-class pixel
histogram. ``check_dataset(datamodule)`` returns a ``CheckReport``; ``main(args)`` is the console entry
(``segcentroids check-data --config ...`` or ``python -m segcentroids.data.check --config ...``) and returns 1 when
there are problems.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from jsonargparse import ArgumentError, ArgumentParser

from segcentroids.data.base import LabelLoader, SegDataModule, label_reader, load_pair, short_list
from segcentroids.data.layouts import SplitScan


@dataclass
class SplitReport:
    """Findings on one split."""

    split: str
    expected: int | None = None
    pairs: int = 0
    images: int = 0
    labels: int = 0
    checked: int = 0
    listing_errors: list[str] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)
    bad_values: dict[int, list[str]] = field(default_factory=dict)
    class_pixels: np.ndarray | None = None
    ignore_pixels: int = 0

    def problems(self, check_counts: bool = True) -> list[str]:
        """One line per problem found."""
        lines = [f"{self.split}: cannot list the split: {error}" for error in self.listing_errors]
        if check_counts and self.expected is not None and self.pairs != self.expected and not self.listing_errors:
            lines.append(f"{self.split}: {self.pairs} image/label pairs, expected {self.expected}")
        lines += [f"{self.split}: {line}" for line in self.unpaired]
        if self.unreadable:
            lines.append(f"{self.split}: {len(self.unreadable)} unreadable file(s): {short_list(self.unreadable, 5)}")
        if self.size_mismatches:
            lines.append(
                f"{self.split}: {len(self.size_mismatches)} image/label size mismatch(es): "
                f"{short_list(self.size_mismatches, 5)}"
            )
        for value, files in sorted(self.bad_values.items()):
            lines.append(
                f"{self.split}: label value {value} is not allowed by the dataset's rule, in {len(files)} file(s): "
                f"{short_list(files, 5)}"
            )
        return lines


@dataclass
class CheckReport:
    """Findings on every checked split of one DataModule."""

    dataset: str
    root: str
    class_names: list[str]
    splits: list[SplitReport]
    check_counts: bool = True

    @property
    def problems(self) -> list[str]:
        return [line for split in self.splits for line in split.problems(self.check_counts)]

    @property
    def ok(self) -> bool:
        return not self.problems

    def histogram_lines(self, split: SplitReport, top: int = 10) -> list[str]:
        """Class pixel shares of ``split``: the largest classes, the smallest seen, and the classes never seen."""
        if split.class_pixels is None or split.checked == 0:
            return []
        counts = split.class_pixels
        labelled = int(counts.sum())
        total = labelled + split.ignore_pixels
        lines = [f"  pixels: {total:,} ({100 * split.ignore_pixels / max(total, 1):.2f}% ignore)"]
        order = np.argsort(-counts, kind="stable")
        seen = [int(i) for i in order if counts[i] > 0]

        def share(index: int) -> str:
            return f"{self.class_names[index]} {100 * counts[index] / max(labelled, 1):.2f}%"

        lines.append("  largest classes: " + ", ".join(share(i) for i in seen[:top]))
        if len(seen) > top:
            lines.append("  smallest classes: " + ", ".join(share(i) for i in seen[top:][-top:][::-1]))
        missing = [self.class_names[i] for i in range(len(counts)) if counts[i] == 0]
        lines.append(f"  classes never seen: {len(missing)}" + (f" ({short_list(missing)})" if missing else ""))
        return lines

    def format(self) -> str:
        """The human-readable summary."""
        lines = [f"{self.dataset} at {self.root}: {len(self.class_names)} classes"]
        for split in self.splits:
            expected = "?" if split.expected is None else f"{split.expected:,}"
            lines.append(
                f"[{split.split}] images {split.images:,}, labels {split.labels:,}, pairs {split.pairs:,} "
                f"(expected {expected}), pairs read {split.checked:,}"
            )
            lines += self.histogram_lines(split)
        problems = self.problems
        lines.append(f"{len(problems)} problem(s)" + (":" if problems else ": the dataset is ready"))
        lines += [f"  - {line}" for line in problems]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Machine-readable report (histograms as ``{class name: pixels}``)."""
        return {
            "dataset": self.dataset,
            "root": self.root,
            "ok": self.ok,
            "problems": self.problems,
            "splits": {
                s.split: {
                    "pairs": s.pairs,
                    "images": s.images,
                    "labels": s.labels,
                    "expected": s.expected,
                    "checked": s.checked,
                    "ignore_pixels": s.ignore_pixels,
                    "class_pixels": None if s.class_pixels is None else dict(
                        zip(self.class_names, (int(c) for c in s.class_pixels))
                    ),
                }
                for s in self.splits
            },
        }


def scan_split(datamodule: SegDataModule, split: str) -> SplitScan:
    """``datamodule.scan_split(split)``, or the pairs of a DataModule that implements only ``list_split``."""
    if type(datamodule).scan_split is SegDataModule.scan_split:
        return SplitScan(pairs=list(datamodule.list_split(split)), where=split)
    return datamodule.scan_split(split)


def _list_pairs(datamodule: SegDataModule, split: str, report: SplitReport) -> list[tuple[Path, Path]]:
    """The split's pairs; unpaired files and listing errors go into ``report``."""
    try:
        scan = scan_split(datamodule, split)
    except (OSError, ValueError) as error:
        report.listing_errors.append(str(error))
        return []
    report.unpaired = scan.problems
    report.images = len(scan.pairs) + len(scan.unlabelled)
    report.labels = len(scan.pairs) + len(scan.orphans)
    return scan.pairs


def _check_pair(read_labels: LabelLoader, num_classes: int, ignore: int, pair: tuple[Path, Path]) -> dict[str, Any]:
    """Read one pair with the datasets' ``load_pair``; returns the problems found and its class histogram."""
    image_path, label_path = pair
    loaded = load_pair(image_path, label_path, read_labels, num_classes, ignore)
    unreadable = [str(path) for path, error in ((image_path, loaded.image_error), (label_path, loaded.label_error))
                  if error is not None]
    result: dict[str, Any] = {"unreadable": unreadable, "size": None, "bad": {}, "hist": None, "ignore": 0}
    if loaded.label_error is not None:
        return result
    raw, label, invalid = loaded.raw, loaded.label, loaded.undefined
    if loaded.size_error is not None:
        height, width = loaded.image_size
        result["size"] = f"{image_path.name} {height}x{width} vs {label_path.name} {raw.shape[0]}x{raw.shape[1]}"
    if loaded.value_error is not None:
        result["bad"] = {int(v): str(label_path) for v in np.unique(raw[invalid])}
    valid = label[~invalid].astype(np.int64)
    result["ignore"] = int((valid == ignore).sum())
    result["hist"] = np.bincount(valid[valid != ignore], minlength=num_classes)[:num_classes]
    return result


def _map_in_chunks(pool: ThreadPoolExecutor, function: Callable, items: list, chunk: int = 512) -> Iterator:
    """``pool.map`` over ``items`` a chunk at a time, so a split of 100k files does not queue 100k futures."""
    for start in range(0, len(items), chunk):
        yield from pool.map(function, items[start : start + chunk])


def default_splits(datamodule: SegDataModule) -> list[str]:
    """The splits to check: train, val, and test unless it lists the val data again."""
    splits = ["train", "val"]
    if "test" not in expected_sizes(datamodule):
        return splits
    try:
        same = scan_split(datamodule, "test").pairs == scan_split(datamodule, "val").pairs
    except (OSError, ValueError):
        same = False
    return splits if same else [*splits, "test"]


def expected_sizes(datamodule: SegDataModule) -> dict[str, int]:
    """Expected pairs per split (the dataset's published sizes), empty when unknown."""
    return dict(getattr(datamodule, "SPLIT_SIZES", None) or {})


def check_dataset(
    datamodule: SegDataModule,
    splits: Sequence[str] | None = None,
    limit: int | None = None,
    workers: int = 4,
    check_counts: bool = True,
) -> CheckReport:
    """Walk ``datamodule``'s splits and read every pair (the first ``limit`` per split when given).

    ``check_counts`` compares the number of pairs with the dataset's published split sizes.
    """
    if datamodule.root is None or not Path(datamodule.root).is_dir():
        raise FileNotFoundError(f"dataset root {datamodule.root} does not exist or is not a folder")
    sizes = expected_sizes(datamodule)
    num_classes = datamodule.num_classes
    read_labels = label_reader(datamodule.map_labels, datamodule.load_label)
    check_pair = partial(_check_pair, read_labels, num_classes, datamodule.ignore_index)
    reports = []
    for split in splits or default_splits(datamodule):
        report = SplitReport(split=split, expected=sizes.get(split))
        pairs = _list_pairs(datamodule, split, report)
        report.pairs = len(pairs)
        pairs = pairs[:limit] if limit is not None else pairs
        report.class_pixels = np.zeros(num_classes, dtype=np.int64)
        with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV decodes without the GIL
            for result in _map_in_chunks(pool, check_pair, pairs):
                report.checked += 1
                report.unreadable += result["unreadable"]
                if result["size"]:
                    report.size_mismatches.append(result["size"])
                for value, path in result["bad"].items():
                    report.bad_values.setdefault(value, []).append(path)
                if result["hist"] is not None:
                    report.class_pixels += result["hist"]
                report.ignore_pixels += result["ignore"]
        reports.append(report)
    return CheckReport(
        dataset=type(datamodule).__name__,
        root=str(datamodule.root),
        class_names=datamodule.class_names,
        splits=reports,
        check_counts=check_counts and limit is None,
    )


def build_datamodule(configs: Sequence[str], overrides: Sequence[str]) -> SegDataModule:
    """The DataModule of the ``data`` section of ``configs`` (full run configs or data configs), with ``--data.*``
    overrides, built by jsonargparse as the training CLI builds it."""
    data: Any = None
    for path in configs:
        content = yaml.safe_load(Path(path).read_text()) or {}
        if "class_path" in content:  # a data config (configs/data/*.yaml)
            data = content
        elif "data" in content:
            data = content["data"]
            if isinstance(data, dict) and "class_path" not in data:
                raise ValueError(f"the data section of {path} has no class_path")
    if data is None and not any(arg.startswith("--data=") or arg == "--data" for arg in overrides):
        raise ValueError("no data section: give --config with a `data:` section or a data config, or --data=...")
    parser = ArgumentParser(prog="segcentroids check-data", exit_on_error=False)
    parser.add_subclass_arguments(SegDataModule, "data", required=True)
    given = [] if data is None else [f"--data={data if isinstance(data, str) else json.dumps(data)}"]
    config = parser.parse_args(given + list(overrides))
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    return instantiate(config).data


def main(args: Sequence[str] | None = None) -> int:
    """Console entry: check the dataset of a config; returns 0 when clean, 1 on problems, 2 on a usage error."""
    parser = argparse.ArgumentParser(
        prog="segcentroids check-data",
        description="Walk a dataset root and report counts, unpaired/unreadable files, size mismatches, label "
        "values the dataset's rule does not allow, and the class pixel histogram. Extra --data.* arguments "
        "override the config (e.g. --data.init_args.root=/data/ADEChallengeData2016).",
    )
    parser.add_argument("--config", action="append", default=[], help="run or data config file (repeatable)")
    parser.add_argument("--splits", nargs="+", default=None, help="splits to check (default: train val [test])")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N pairs of each split")
    parser.add_argument("--workers", type=int, default=4, help="reader threads")
    parser.add_argument("--no-count-check", action="store_true", help="do not compare with the published sizes")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")
    options, overrides = parser.parse_known_args(list(sys.argv[1:] if args is None else args))
    unknown = [arg for arg in overrides if arg.startswith("-") and not arg.startswith("--data")]
    if unknown:
        parser.print_usage(sys.stderr)
        print(f"unknown arguments: {' '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        datamodule = build_datamodule(options.config, overrides)
        report = check_dataset(
            datamodule, options.splits, options.limit, options.workers, check_counts=not options.no_count_check
        )
    except (OSError, ValueError, TypeError, ArgumentError) as error:
        print(f"check-data: {error}", file=sys.stderr)
        return 2
    print(report.format())
    if options.json:
        Path(options.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
