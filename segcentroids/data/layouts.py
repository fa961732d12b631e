"""Finding the ``(image, label)`` pairs of a split in the datasets' on-disk layouts, with every unpaired file kept.

``SplitScan`` holds the pairs found and the files that could not be paired; ``SplitScan.checked()`` returns the
pairs or raises a ``ValueError`` listing every problem (what ``list_split`` does), while the dataset checker reports
the problems and goes on with the pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segcentroids.data.base import FilePair, SegDataModule, short_list


@dataclass
class SplitScan:
    """What a walk of one split found: pairs, images without a label, labels without an image, listed names
    without an image file, image names given by two files (``"<kept> and <other>"``)."""

    pairs: list[FilePair] = field(default_factory=list)
    unlabelled: list[Path] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    where: str = ""

    @property
    def problems(self) -> list[str]:
        """One line per kind of unpaired file, naming the files."""
        lines = []
        if self.unlabelled:
            lines.append(f"{len(self.unlabelled)} image(s) without a label: {short_list(self.unlabelled)}")
        if self.orphans:
            lines.append(f"{len(self.orphans)} label(s) without an image: {short_list(self.orphans)}")
        if self.missing:
            lines.append(f"{len(self.missing)} listed name(s) without an image file: {short_list(self.missing)}")
        if self.duplicates:
            lines.append(f"{len(self.duplicates)} image name(s) given by two files: {short_list(self.duplicates)}")
        return lines

    def checked(self) -> list[FilePair]:
        """The pairs; raises ``ValueError`` listing the unpaired files, ``FileNotFoundError`` for an empty split."""
        if self.problems:
            raise ValueError(f"unpaired files in {self.where}: " + "; ".join(self.problems))
        if not self.pairs:
            raise FileNotFoundError(f"no image/label pairs in {self.where}")
        return self.pairs


def _files_by_key(folder: Path, suffixes: Sequence[str], recursive: bool) -> tuple[dict[str, Path], list[str]]:
    """Files of ``folder`` whose name ends with one of ``suffixes``, keyed by relative path minus the suffix, and
    the keys given by two files (``"<kept> and <other>"``).

    A file takes the first suffix it ends with; when two files give the same key, the one with the earlier suffix
    is kept (e.g. ``x_labelTrainIds.png`` over ``x.png``).
    """
    files: dict[str, tuple[int, Path]] = {}
    shadowed: list[tuple[Path, Path]] = []
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        relative = path.relative_to(folder).as_posix()
        rank = next((i for i, s in enumerate(suffixes) if relative.lower().endswith(s.lower())), None)
        if rank is None:
            continue
        key = relative[: -len(suffixes[rank])]
        if key in files:
            kept, other = (path, files[key][1]) if rank < files[key][0] else (files[key][1], path)
            shadowed.append((kept, other))
        if key not in files or rank < files[key][0]:
            files[key] = (rank, path)
    return {key: path for key, (_, path) in files.items()}, [f"{kept} and {other.name}" for kept, other in shadowed]


def scan_folders(
    image_dir: Path,
    label_dir: Path,
    image_suffixes: Sequence[str],
    label_suffixes: Sequence[str],
    recursive: bool = False,
) -> SplitScan:
    """Pair images and labels of two folders by name (relative path minus suffix; suffixes match
    case-insensitively). ``label_suffixes`` are in order of preference; an image name given by two files is a
    problem (``SplitScan.duplicates``).

    Raises ``FileNotFoundError`` naming a missing folder.
    """
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"split folder {folder} does not exist")
    images, duplicates = _files_by_key(image_dir, image_suffixes, recursive)
    labels, _ = _files_by_key(label_dir, label_suffixes, recursive)
    return SplitScan(
        pairs=[(images[key], labels[key]) for key in sorted(images.keys() & labels.keys())],
        unlabelled=[images[key] for key in sorted(images.keys() - labels.keys())],
        orphans=[labels[key] for key in sorted(labels.keys() - images.keys())],
        duplicates=duplicates,
        where=f"{image_dir} and {label_dir}",
    )


def scan_list(
    list_file: Path,
    image_candidates: Callable[[str], Sequence[Path]],
    label_candidates: Callable[[str], Sequence[Path]],
) -> SplitScan:
    """Pairs for the names in ``list_file`` (one per line); each takes its first existing candidate file.

    Raises ``FileNotFoundError`` naming a missing list file.
    """
    if not list_file.is_file():
        raise FileNotFoundError(f"split list {list_file} does not exist")
    scan = SplitScan(where=str(list_file))
    for name in (line.strip() for line in list_file.read_text().splitlines()):
        if not name:
            continue
        image = next((p for p in image_candidates(name) if p.is_file()), None)
        label = next((p for p in label_candidates(name) if p.is_file()), None)
        if image is None:
            scan.missing.append(name)
        elif label is None:
            scan.unlabelled.append(image)
        else:
            scan.pairs.append((image, label))
    return scan


class PairedFoldersDataModule(SegDataModule):
    """A dataset whose splits are an image folder and a label folder paired by name:
    ``<dataset_dir>/<IMAGE_DIR>/<folder>/`` and ``<dataset_dir>/<LABEL_DIR>/<folder>/``, ``folder`` from
    ``SPLIT_FOLDERS``. ``dataset_dir`` is ``root/<NESTED_DIR>`` when that folder exists, else ``root``."""

    DATASET_NAME = "dataset"
    NESTED_DIR: str | None = None
    IMAGE_DIR, LABEL_DIR = "images", "annotations"
    IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")
    LABEL_SUFFIXES: tuple[str, ...] = (".png",)
    SPLIT_FOLDERS: dict[str, str] = {}

    @property
    def dataset_dir(self) -> Path:
        """The folder holding the image and label folders."""
        nested = self.root / self.NESTED_DIR if self.NESTED_DIR else None
        return nested if nested is not None and nested.is_dir() else self.root

    def scan_split(self, split: str) -> SplitScan:
        """Pairs ``<IMAGE_DIR>/<folder>/<name><image suffix>`` with ``<LABEL_DIR>/<folder>/<name><label suffix>``."""
        if split not in self.SPLIT_FOLDERS:
            raise ValueError(f"{self.DATASET_NAME} split must be one of {sorted(self.SPLIT_FOLDERS)}, got {split!r}")
        folder, base = self.SPLIT_FOLDERS[split], self.dataset_dir
        return scan_folders(base / self.IMAGE_DIR / folder, base / self.LABEL_DIR / folder, self.IMAGE_SUFFIXES,
                            self.LABEL_SUFFIXES)
