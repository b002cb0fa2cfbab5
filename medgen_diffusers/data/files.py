"""Listing a local folder's files, the one way every reader does it: ``os.scandir`` (a directory entry knows
whether it is a file without a stat call), sorted as pathlib sorts paths (by components). A 100k-file folder is
listed in ~0.5 s, against ~3 s for ``sorted(path.rglob("*"))`` with ``is_file()`` (2-core Xeon). And how a
run records a source (:func:`recorded_source`): the store's cache key and every run_config.json use it."""

import os
from pathlib import Path
from typing import List, Optional, Tuple


def walk(root: Path, stat: bool = False) -> List[Tuple[Tuple[str, ...], Optional[os.stat_result]]]:
    """(relative path components, its stat when ``stat``) of every file under ``root``, sorted."""
    files, folders = [], [(str(root), ())]
    while folders:
        folder, parts = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    folders.append((entry.path, parts + (entry.name,)))
                elif entry.is_file():
                    files.append((parts + (entry.name,), entry.stat() if stat else None))
    files.sort(key=lambda file: file[0])
    return files


def visible_files(root: Path) -> List[Path]:
    """The files under ``root`` whose names do not start with '.', sorted."""
    return [root.joinpath(*parts) for parts, _ in walk(root) if not parts[-1].startswith(".")]


def recorded_source(dataset: str) -> str:
    """How a training run records its data source: local folders/files as absolute paths (so commands find them
    from any directory; cards and pushes cut them to a name), MedMNIST flags and Hub names as given."""
    path = Path(dataset).expanduser()
    return str(path.resolve()) if path.exists() else dataset
