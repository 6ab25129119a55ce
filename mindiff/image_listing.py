"""An image folder (one sub-folder per class, as torchvision's ImageFolder reads it), listed only once it looks
like one, and never more than a bound of entries: `dataset.root=/usr` is refused in a moment instead of
walking the disk for minutes.

The layout is checked from the top down, each step cheap: the folder has 1 to MAX_CLASSES sub-folders; each
holds an image file at its first level (the first one found ends the look); they are as many as the dataset's
classes. Only then are the class folders listed in full, in ImageFolder's order (so a cache keyed by the
listing stays valid), following links but never into a folder twice, with progress shown when it takes long.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

from tqdm import tqdm

from mindiff.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
MAX_CLASSES = 10_000  # sub-folders of a dataset folder, at most (each is looked into before any is listed)
MAX_ENTRIES = 2_000_000  # files and folders looked at, at most (ImageNet-1k's train split: 1.28M in 1000 folders)
WHAT_TO_DO = "set {} to the folder that holds one sub-folder of images per class (mindiff.evaluate: dataset_root=)"


class FolderError(UserError, RuntimeError):
    """A dataset folder that is not a folder of class sub-folders; the message names it and what to do."""


@dataclass
class Listing:
    classes: List[str]
    samples: List[Tuple[str, int, int, int]]  # (path relative to the folder, class index, bytes, mtime_ns)

    @property
    def targets(self) -> List[int]:
        return [target for _, target, _, _ in self.samples]

    @property
    def signature(self) -> str:
        """What the images are, for a cache key: every file's relative path, size and modification time."""
        return "\n".join(f"{rel}:{size}:{mtime}" for rel, _, size, mtime in self.samples)


def is_image(entry: os.DirEntry) -> bool:
    return entry.name.lower().endswith(IMAGE_SUFFIXES) and not entry.is_dir()


class _Scan:
    """Folder listings that count every entry against MAX_ENTRIES, with a progress line after a second."""

    def __init__(self, folder: Path, setting: str):
        self.folder, self.setting, self.seen = folder, setting, 0
        self.bar = tqdm(desc=f"listing {folder}", unit=" entries", delay=1, mininterval=2, leave=False)

    def refuse(self, why: str) -> FolderError:
        return FolderError(f"{self.setting}={self.folder} {why}; {WHAT_TO_DO.format(self.setting)}")

    def entries(self, path: str):
        """The entries of one folder, as they come (a caller that found what it wanted stops early)."""
        try:
            with os.scandir(path) as found:
                for entry in found:
                    self.seen += 1
                    if self.seen > MAX_ENTRIES:
                        raise self.refuse(f"holds more than {MAX_ENTRIES:,} files and folders (listing stopped in "
                                          f"{path}): too many for a dataset")
                    if self.seen % 4096 == 0:
                        self.bar.update(4096)
                    yield entry
        except OSError as e:
            raise self.refuse(f"cannot be listed: {path} ({e.strerror or e})") from None

    def walk(self, top: str) -> List[Tuple[str, List[os.DirEntry]]]:
        """(folder, its image entries) for `top` and every folder below it, links followed, each folder once."""
        found, todo, visited = [], [top], set()
        while todo:
            path = todo.pop()
            try:
                st = os.stat(path)
            except OSError as e:
                raise self.refuse(f"cannot be listed: {path} ({e.strerror or e})") from None
            if (st.st_dev, st.st_ino) in visited:  # a link back to a folder already listed
                continue
            visited.add((st.st_dev, st.st_ino))
            images = []
            for entry in self.entries(path):
                if entry.is_dir():
                    todo.append(entry.path)
                elif is_image(entry):
                    images.append(entry)
            found.append((path, images))
        return found


def class_folders(scan: _Scan, num_classes: int) -> List[str]:
    """The top level's sub-folders, refused unless each starts with an image and they are as many as the classes."""
    if not scan.folder.is_dir():
        raise scan.refuse("is no folder")
    classes = sorted(entry.name for entry in scan.entries(str(scan.folder)) if entry.is_dir())
    if not classes or len(classes) > MAX_CLASSES:
        raise scan.refuse(f"has {len(classes) or 'no'} sub-folders, not one per class (1 to {MAX_CLASSES:,})")
    for name in classes:
        if not any(is_image(entry) for entry in scan.entries(str(scan.folder / name))):
            raise scan.refuse(f"is no folder of class folders: its sub-folder {name} holds no image files "
                              f"({' '.join(IMAGE_SUFFIXES)}) at its first level")
    if len(classes) != num_classes:
        shown = ", ".join(classes[:5]) + (", …" if len(classes) > 5 else "")
        raise FolderError(f"{scan.setting}={scan.folder} has {len(classes)} class folders ({shown}), not "
                          f"dataset.num_classes={num_classes}: set dataset.num_classes={len(classes)}, or "
                          f"{WHAT_TO_DO.format(scan.setting)}")
    return classes


def sample(entry: os.DirEntry, folder: Path, target: int) -> Tuple[str, int, int, int]:
    try:
        st = entry.stat()
    except OSError as e:  # a broken link
        raise FolderError(f"cannot read image {entry.path} ({e.strerror or e}); remove or replace the file") from None
    return os.path.relpath(entry.path, folder), target, st.st_size, st.st_mtime_ns


def list_image_folder(folder: Path, num_classes: int, setting: str = "dataset.root") -> Listing:
    """Every image of a folder of class sub-folders, in ImageFolder's order (classes sorted; within one, its
    folders sorted by path, then file names), or a FolderError naming `setting` and what to do."""
    scan = _Scan(folder, setting)
    try:
        classes = class_folders(scan, num_classes)
        samples = []
        for target, name in enumerate(classes):
            for path, images in sorted(scan.walk(os.path.join(str(folder), name)), key=lambda f: f[0]):
                samples += [sample(entry, folder, target) for entry in sorted(images, key=lambda e: e.name)]
    finally:
        scan.bar.close()
    return Listing(classes, samples)
