"""The image tree ImageExampleGen reads: layouts, spans, one safe walk, the layout checks, and one fingerprint.

Layouts (relative to `input_base`; see components/image_example_gen.py):
  * hash split:  `<class>/**/<image>`
  * pre-split:   `<train_dir>/<class>/**/<image>` and `<eval_dir>/<class>/**/<image>`
  * spans:       `span-1/...`, `span-2/...`, each laid out as one of the above; data.spans selects which are read.

`list_input` walks the selected spans and splits once and returns an `InputListing`: every file with its class,
its path relative to input_base, its size and modification time. The same listing gives the layout checks
(`check_listing`), the files each split's Beam source reads, and the input fingerprint the ingest report, the
served version's record and the no-op pre-check compare (serving/model_record.files_fingerprint).

`apply_label_fixes` applies a person's label fixes (components/label_fixes.py) to a checked listing: relabelled
files carry their new class, dropped ones move to `dropped`, and the fingerprint includes the fixes file's hash.

Local folders are read with os alone: TensorFlow is imported only for a URI (gs://...), so the CLI checks a local
data root and its fixes before TensorFlow loads.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import unicodedata
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from tfx.proto import example_gen_pb2

from components import label_fixes as lf
from components.settings import span_window
from serving.model_record import files_fingerprint

SPAN_FOLDER = re.compile(r"^span-(\d+)$")

# Files and folders that operating systems and tools leave in image folders. They are not data: ignored, neither
# read nor quarantined nor counted (macOS `.DS_Store` and `._*` AppleDouble files, Windows `Thumbs.db`,
# `desktop.ini`, zip tools' `__MACOSX`, and any other hidden name).
LITTER_NAMES = frozenset({"Thumbs.db", "ehthumbs.db", "desktop.ini", "Desktop.ini", "__MACOSX", "Icon\r"})


class DataUnusableError(ValueError):
    """The image folder cannot produce a usable dataset (the message says why and where)."""


# --- split layout ----------------------------------------------------------------------------------------------


def make_input_config(split_mode: str, train_dir: str, eval_dir: str) -> example_gen_pb2.Input:
    """Input splits for a layout. A pattern names `<split root>/*/*`: the split root's class folders' entries."""
    if split_mode == "presplit":
        return example_gen_pb2.Input(
            splits=[
                example_gen_pb2.Input.Split(name="train", pattern=f"{train_dir}/*/*"),
                example_gen_pb2.Input.Split(name="eval", pattern=f"{eval_dir}/*/*"),
            ]
        )
    return example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="single_split", pattern="*/*")])


def resolve_split_mode(
    data_root: str, split_mode: str, train_dir: str, eval_dir: str, spans: Sequence[str] = ()
) -> str:
    """`auto` means pre-split when both split folders exist under data_root (under every selected span), else
    hash. Selected spans that mix the two layouts are an error."""
    if split_mode != "auto":
        return split_mode
    roots = [os.path.join(data_root, span) for span in spans] or [data_root]
    presplit = [all(_isdir(os.path.join(root, d)) for d in (train_dir, eval_dir)) for root in roots]
    if any(presplit) and not all(presplit):
        mixed = [span for span, pre in zip(spans, presplit, strict=True) if not pre]
        raise DataUnusableError(
            f"span(s) {', '.join(mixed)} under {data_root} are not split into {train_dir}/ and {eval_dir}/ like the "
            "other selected spans; use one layout for all spans, or set data.split_mode"
        )
    return "presplit" if presplit[0] else "hash"


def split_root_of(pattern: str) -> str:
    """`train/*/*` -> `train`; `*/*` -> ``."""
    parts = pattern.split("/")
    if len(parts) < 2 or parts[-2:] != ["*", "*"]:
        raise ValueError(f"split pattern {pattern!r} must end with '<class>/<file>' wildcards '*/*'")
    return "/".join(parts[:-2])


def split_roots(input_base: str, spans: Sequence[str], pattern: str) -> List[Tuple[str, str]]:
    """(folder, its path relative to input_base) holding one split's class folders, for each selected span."""
    prefix = split_root_of(pattern)
    relative = [os.path.join(span, prefix).rstrip("/") for span in spans] or [prefix]
    return [(os.path.join(input_base, rel) if rel else input_base, rel) for rel in relative]


# --- spans -----------------------------------------------------------------------------------------------------


def list_spans(input_base: str) -> List[str]:
    """The `span-<N>` folders directly under input_base, oldest (lowest N) first; [] for a plain layout."""
    if not _isdir(input_base):
        return []
    found = []
    for name in _listdir(input_base):
        name = name.rstrip("/")
        match = SPAN_FOLDER.match(name)
        if match and _isdir(os.path.join(input_base, name)):
            found.append((int(match.group(1)), name))
    return [name for _, name in sorted(found)]


def select_spans(input_base: str, spans_setting: str) -> List[str]:
    """The span folders data.spans selects (all, latest, or the newest N), oldest first; [] without spans."""
    spans = list_spans(input_base)
    newest = span_window(spans_setting)
    return spans if newest is None else spans[-newest:]


def span_number(span: str) -> int:
    """`span-12` -> 12."""
    return int(SPAN_FOLDER.match(span).group(1))


# --- class folders ---------------------------------------------------------------------------------------------

# Local folders go through os (symlinks followed, once each; a dangling one is listed, then quarantined); URIs
# such as gs://bucket/images (the data root of a Kubeflow run) through tf.io.gfile.


def is_litter(name: str) -> bool:
    return name.startswith(".") or name in LITTER_NAMES


def is_uri(path: str) -> bool:
    return "://" in path


def _gfile():
    """TensorFlow's file system, for URIs only (imported when first needed)."""
    import tensorflow as tf

    return tf.io.gfile


def _isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_uri(path) else os.path.isdir(path)


def _listdir(path: str) -> List[str]:
    # os for local folders: TensorFlow's listdir fails outright on a name that is not valid UTF-8.
    return _gfile().listdir(path) if is_uri(path) else os.listdir(path)


def list_classes(split_root: str) -> List[str]:
    """Sorted class folder names directly under split_root (hidden folders and OS litter ignored)."""
    if not _isdir(split_root):
        raise DataUnusableError(f"image folder {split_root} does not exist or is not a directory")
    names = _listdir(split_root)
    return sorted(
        name.rstrip("/") for name in names if not is_litter(name.rstrip("/")) and _isdir(os.path.join(split_root, name))
    )


def check_class_names(split_root: str, classes: Iterable[str]) -> None:
    """A class folder name becomes a label string in the model and in TF Serving's JSON answers: refuse names that
    are not valid UTF-8, hold control characters (a newline would split the label vocabulary), start or end with
    blanks, or collide with another class on a case-insensitive or Unicode-normalising file system."""
    seen: Dict[str, str] = {}
    for name in classes:
        problem = None
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            problem = "is not valid UTF-8"
        else:
            if any(unicodedata.category(ch) == "Cc" for ch in name):
                problem = "contains a control character (newline, tab, ...)"
            elif name != name.strip():
                problem = "starts or ends with a blank"
        if problem is None:
            key = unicodedata.normalize("NFC", name).casefold()
            if key in seen:
                problem = (
                    f"differs from class folder {seen[key]!r} only by letter case or Unicode normalisation (the two "
                    "merge on macOS/Windows file systems)"
                )
            seen[key] = name
        if problem:
            raise DataUnusableError(
                f"class folder name {name!r} under {split_root} {problem}; rename the folder (class names become "
                "the model's labels)"
            )


# --- the walk --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ListedFile:
    """One input file: its class folder, its path (relative to the folder walked), size and mtime (ns).

    A dangling symlink carries the link's own size and mtime (it is listed, and quarantined as unreadable)."""

    class_name: str
    path: str
    size: int
    mtime_ns: int


def walk_files(split_root: str, classes: Iterable[str]) -> List[ListedFile]:
    """Every file below each class folder of split_root, in sorted order, paths relative to split_root.

    Local folders are walked safely: a symlinked folder is followed only once and never into the split root, an
    ancestor of it, or another class's folder (a `cats/loop -> ..` link would otherwise relabel every dog as a
    cat, over and over); a file reached through several links or hard links is listed once; OS litter is
    skipped. Each file's size and mtime come from the stat the walk needs anyway (to tell links apart)."""
    classes = list(classes)
    if is_uri(split_root):
        return _walk_uri_files(split_root, classes)
    real_classes = {c: os.path.realpath(os.path.join(split_root, c)) for c in classes}
    files: List[ListedFile] = []
    seen_files: set = set()
    for class_name in classes:
        others = [d for c, d in real_classes.items() if c != class_name]
        seen_dirs: set = set()
        pending = [os.path.join(split_root, class_name)]
        while pending:
            folder = pending.pop()
            real = os.path.realpath(folder)
            if real in seen_dirs or _is_foreign(real, real_classes[class_name], others):
                logging.warning(
                    "ImageExampleGen: not following %s (-> %s): already walked, or outside its class", folder, real
                )
                continue
            seen_dirs.add(real)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                logging.warning("ImageExampleGen: cannot list %s: %s", folder, exc)
                continue
            subfolders = []
            for entry in entries:
                if is_litter(entry.name):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                except OSError:
                    is_dir = False
                if is_dir:
                    subfolders.append(entry.path)
                    continue
                try:
                    stat = os.stat(entry.path)
                    key: Any = (stat.st_dev, stat.st_ino)
                    size, mtime_ns = stat.st_size, stat.st_mtime_ns
                    if any(_inside(os.path.realpath(entry.path), d) for d in others):
                        logging.warning(
                            "ImageExampleGen: not listing %s under %s: it is a file of another class",
                            entry.path,
                            class_name,
                        )
                        continue
                except OSError:
                    key = entry.path  # dangling link: listed (and quarantined as unreadable), once
                    size, mtime_ns = _link_size_and_mtime(entry.path)
                if key in seen_files:
                    continue
                seen_files.add(key)
                rel = entry.path[len(split_root) :].lstrip("/")
                files.append(ListedFile(class_name, rel, size, mtime_ns))
            pending.extend(reversed(subfolders))  # depth first, in sorted order
    return files


def list_files(split_root: str, classes: Iterable[str]) -> List[Tuple[str, str]]:
    """(class_name, relative path from split_root) for every file `walk_files` lists."""
    return [(f.class_name, f.path) for f in walk_files(split_root, classes)]


def _link_size_and_mtime(path: str) -> Tuple[int, int]:
    """The link's own size and mtime (ns); zeros when the entry vanished since its folder was listed (the reader
    then quarantines it as vanished)."""
    try:
        stat = os.lstat(path)
    except OSError:
        return 0, 0
    return stat.st_size, stat.st_mtime_ns


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _is_foreign(real: str, own_class: str, other_classes: List[str]) -> bool:
    """A folder reached through a link that must not be walked for this class."""
    if _inside(own_class, real) and real != own_class:
        return True  # the split root or an ancestor: the walk would loop or wander into other classes
    return any(_inside(real, d) for d in other_classes)


def _walk_uri_files(split_root: str, classes: List[str]) -> List[ListedFile]:
    files = []
    for class_name in classes:
        for dirpath, dirnames, filenames in _gfile().walk(os.path.join(split_root, class_name)):
            dirnames[:] = sorted(d for d in dirnames if not is_litter(d.rstrip("/")))
            for filename in sorted(f for f in filenames if not is_litter(f)):
                full = os.path.join(dirpath, filename)
                stat = _gfile().stat(full)
                files.append(ListedFile(class_name, full[len(split_root) :].lstrip("/"), stat.length, stat.mtime_nsec))
    return files


# --- the listing: one walk of the selected spans and splits -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FolderListing:
    """One folder holding one split's class folders (one per selected span). File paths: relative to input_base."""

    folder: str
    exists: bool
    classes: List[str]
    files: List[ListedFile]


@dataclasses.dataclass(frozen=True)
class SplitListing:
    name: str
    pattern: str
    folders: List[FolderListing]


@dataclasses.dataclass(frozen=True)
class InputListing:
    """Every file of the selected spans and splits, listed once."""

    input_base: str
    spans: List[str]
    splits: List[SplitListing]
    # After apply_label_fixes: the files a `drop` fix took out of `splits`, and ingest_report.json's "label_fixes".
    dropped: List[ListedFile] = dataclasses.field(default_factory=list)
    label_fixes: Optional[Dict[str, Any]] = None

    def files(self, pattern: Optional[str] = None) -> List[ListedFile]:
        """The files of every split, or of the split with this pattern."""
        return [
            f
            for split in self.splits
            if pattern is None or split.pattern == pattern
            for folder in split.folders
            for f in folder.files
        ]

    def fingerprint(self) -> str:
        """The input fingerprint (serving/model_record.files_fingerprint): what the ingest report, the Examples
        artifact and the served version's record hold, and what the no-op pre-check compares."""
        on_disk = self.files() + self.dropped
        files = files_fingerprint((f.path, f.size, f.mtime_ns) for f in on_disk)
        return lf.fingerprint_with_fixes(files, (self.label_fixes or {}).get("sha256"))

    def file_classes(self) -> Dict[str, str]:
        """{file name: its class} of every listed file."""
        return {f.path: f.class_name for f in self.files() + self.dropped}


def list_input(input_base: str, input_config: example_gen_pb2.Input, spans: Sequence[str]) -> InputListing:
    """Walks the selected spans' split folders once. A missing split folder is listed as such (check_listing
    refuses it; a fingerprint simply has no files from it)."""
    splits = []
    for split in input_config.splits:
        folders = []
        for folder, rel in split_roots(input_base, spans, split.pattern):
            if not _isdir(folder):
                folders.append(FolderListing(folder, False, [], []))
                continue
            classes = list_classes(folder)
            files = [
                dataclasses.replace(f, path=os.path.join(rel, f.path) if rel else f.path)
                for f in walk_files(folder, classes)
            ]
            folders.append(FolderListing(folder, True, classes, files))
        splits.append(SplitListing(split.name, split.pattern, folders))
    return InputListing(input_base, list(spans), splits)


def input_files(input_base: str, input_config: example_gen_pb2.Input, spans: Sequence[str]) -> List[Tuple[str, str]]:
    """(class_name, path relative to input_base) of every file the selected spans and splits hold (a fresh walk)."""
    return [(f.class_name, f.path) for f in list_input(input_base, input_config, spans).files()]


def input_fingerprint(
    input_base: str, input_config: example_gen_pb2.Input, spans: Sequence[str], label_fixes: str = ""
) -> str:
    """The fingerprint of the selected input files and the label fixes file's content (when there is one), from
    a fresh walk (the no-op pre-check's). `label_fixes`: the data.label_fixes setting."""
    listing = list_input(input_base, input_config, spans)
    fixes = lf.load_label_fixes(input_base, label_fixes)
    files = files_fingerprint((f.path, f.size, f.mtime_ns) for f in listing.files())
    return lf.fingerprint_with_fixes(files, fixes.sha256 if fixes else None)


# --- label fixes -----------------------------------------------------------------------------------------------


def apply_label_fixes(listing: InputListing, fixes: Optional[lf.LabelFixes], class_names: List[str]) -> InputListing:
    """The listing with `fixes` applied (checked first: LabelFixesError names a bad row): relabelled files carry
    their new class, dropped files are in `dropped` instead of their split, `label_fixes` says what was applied.
    Without fixes, the listing as it is. Call it on a listing check_listing accepted (its `class_names`)."""
    if fixes is None:
        return listing
    file_classes = listing.file_classes()
    lf.check_label_fixes(fixes, file_classes, class_names, listing.spans)
    relabel = {f.file: f.class_name for f in fixes.by_action(lf.RELABEL)}
    drop = {f.file for f in fixes.by_action(lf.DROP)}
    dropped: List[ListedFile] = list(listing.dropped)
    splits = []
    for split in listing.splits:
        folders = []
        for folder in split.folders:
            files = []
            for f in folder.files:
                if f.path in drop:
                    dropped.append(f)
                elif f.path in relabel:
                    files.append(dataclasses.replace(f, class_name=relabel[f.path]))
                else:
                    files.append(f)
            folders.append(dataclasses.replace(folder, files=files))
        splits.append(dataclasses.replace(split, folders=folders))
    return InputListing(listing.input_base, listing.spans, splits, dropped, lf.applied(fixes, file_classes))


def check_input_and_fixes(
    input_base: str, input_config: example_gen_pb2.Input, spans: Sequence[str], label_fixes: str = ""
) -> Optional[Dict[str, Any]]:
    """The layout checks and the label fixes' check of a fresh walk (what `ftune run` checks before the pipeline
    starts); returns what the fixes would apply, None without a fixes file."""
    fixes = lf.load_label_fixes(input_base, label_fixes)
    if fixes is None:
        return None
    listing = list_input(input_base, input_config, spans)
    return apply_label_fixes(listing, fixes, check_listing(listing)).label_fixes


# --- layout checks ---------------------------------------------------------------------------------------------


def check_listing(listing: InputListing) -> List[str]:
    """Returns the label vocabulary (sorted class names), or raises DataUnusableError naming the problem.

    With spans, each span's folders are checked on their own (an error names the span's folder) and the
    vocabulary is the union of their class folders."""
    class_names: Optional[List[str]] = None
    for split in listing.splits:
        multiple = len(split.folders) > 1
        for folder in split.folders:
            _check_folder(folder, multiple)
        classes = sorted({c for folder in split.folders for c in folder.classes})
        root = listing.input_base if multiple else split.folders[0].folder
        if len(classes) < 2:
            raise DataUnusableError(
                f"{root} has {len(classes)} class folder(s) {classes}; image classification needs at least 2 "
                f"(expected layout: {root}/<class_name>/<image files>)"
            )
        if class_names is None:
            class_names = classes
        elif classes != class_names:
            raise DataUnusableError(
                f"split '{split.name}' ({root}) has classes {classes}, but the first split has {class_names}; "
                "every split needs the same class folders"
            )
    assert class_names is not None
    return class_names


def check_layout(input_base: str, input_config: example_gen_pb2.Input, spans: Sequence[str] = ()) -> List[str]:
    """`check_listing` of a fresh walk."""
    return check_listing(list_input(input_base, input_config, spans))


def _check_folder(folder: FolderListing, multiple: bool) -> None:
    """One split folder (one span's, with spans): it exists, its class names are sound, no class is empty."""
    if not folder.exists:
        raise DataUnusableError(f"image folder {folder.folder} does not exist or is not a directory")
    check_class_names(folder.folder, folder.classes)
    if multiple and not folder.classes:
        raise DataUnusableError(
            f"span folder {folder.folder} holds no class folders (expected {folder.folder}/<class_name>/<images>)"
        )
    counts = collections.Counter(f.class_name for f in folder.files)
    empty = sorted(c for c in folder.classes if counts[c] == 0)
    if empty:
        raise DataUnusableError(f"class folder(s) with no files under {folder.folder}: {', '.join(empty)}")
