"""A person's label fixes: the file, its rules, its check against the data, and what ingestion applied.

The file (serving/sidecars.LABEL_FIXES_FILE, `label_fixes.csv` at the data root; data.label_fixes names another one)
is a CSV with a header row holding at least the columns `file,action,class`; any other column is ignored, so the
review list `ftune review` writes (serving/sidecars.REVIEW_COLUMNS) is one as it is. One file for all spans.

    file    the image's path relative to the data root, as ingestion names it (the `file_name` feature, e.g.
            `span-3/train/circle/x.png`, `train/cats/1.jpg`, `cats/1.jpg`)
    action  relabel  the example gets `class` as its label; the image stays where it is
            drop     the file is quarantined with the reason DROP_REASON (it is listed in the quarantine report)
            keep     the label was checked: the Trainer's check of the training data stops flagging the image
            (empty)  the row is ignored (a review row nobody decided on)
    class   relabel: the class the example gets (one of the data's class folders); ignored otherwise

Bad fixes never run: a malformed row or a missing column, an unknown action, a relabel without a class or to a
class that does not exist, a file that is not one of the selected spans' files, a file named twice with different
actions raise LabelFixesError, one line naming the file, the row and the problem (exit code 3, unusable input).
`ftune run`/`ingest` check this before the pipeline starts (a local data root); ImageExampleGen checks it again
(on Kubeflow there is no CLI), before anything is ingested.

A fixes file is new data: its content's sha256 joins the input fingerprint (`fingerprint_with_fixes`), so a batch
the gate refused is trained again once fixes are added or changed, and an unchanged one is not. No TensorFlow here.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from typing import Any, Dict, List, Mapping, Optional, Sequence

from serving import sidecars

RELABEL, DROP, KEEP = "relabel", "drop", "keep"
ACTIONS = (RELABEL, DROP, KEEP)
REQUIRED_COLUMNS = ("file", "action", "class")
DROP_REASON = "dropped by label fixes"


class LabelFixesError(ValueError):
    """The fixes file cannot be applied (the message names the file, the row and the problem)."""


@dataclasses.dataclass(frozen=True)
class Fix:
    file: str
    action: str
    class_name: str  # relabel: the new class; "" otherwise
    row: int  # the row's line in the file (the header is row 1)


@dataclasses.dataclass(frozen=True)
class LabelFixes:
    path: str
    sha256: str  # "sha256:<hex>" of the file's bytes
    fixes: List[Fix]  # the rows with an action, one per file

    def by_action(self, action: str) -> List[Fix]:
        return [fix for fix in self.fixes if fix.action == action]


def _error(path: str, row: Optional[int], problem: str) -> LabelFixesError:
    where = f"row {row}" if row is not None else "the file"
    return LabelFixesError(f"label fixes {path} {where}: {problem}")


def _normalised(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def parse_label_fixes(data: bytes, path: str) -> LabelFixes:
    """The rows with an action, checked for form (columns, action, class given, one action per file). Raises
    LabelFixesError."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _error(path, None, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise _error(path, 1, "no header row (the file is empty); it needs the columns file,action,class")
        columns = [name.strip().lower() for name in header]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise _error(
                path,
                1,
                f"the header has no {', '.join(repr(m) for m in missing)} column (it has {', '.join(header) or 'none'};"
                " it needs file,action,class)",
            )
        index = {name: columns.index(name) for name in REQUIRED_COLUMNS}
        fixes: Dict[str, Fix] = {}
        for fields in reader:
            row = reader.line_num
            if not any(field.strip() for field in fields):
                continue  # a blank line
            if len(fields) != len(header):
                raise _error(path, row, f"has {len(fields)} fields, the header has {len(header)} (a malformed row)")
            file = _normalised(fields[index["file"]])
            action = fields[index["action"]].strip().lower()
            class_name = fields[index["class"]].strip()
            if not action:
                continue  # not decided
            if action not in ACTIONS:
                raise _error(
                    path, row, f"unknown action {action!r} for {file!r} (use relabel, drop or keep, or leave it empty)"
                )
            if not file:
                raise _error(path, row, f"action {action!r} names no file")
            if action == RELABEL and not class_name:
                raise _error(path, row, f"relabel of {file!r} names no class")
            fix = Fix(file, action, class_name if action == RELABEL else "", row)
            earlier = fixes.get(file)
            if earlier is not None and (earlier.action, earlier.class_name) != (fix.action, fix.class_name):
                raise _error(
                    path,
                    row,
                    f"{file!r} is named twice with different actions (row {earlier.row}: {_describe(earlier)}; "
                    f"here: {_describe(fix)})",
                )
            fixes.setdefault(file, fix)
    except csv.Error as exc:
        raise _error(path, reader.line_num, f"is not a valid CSV row ({exc})") from None
    return LabelFixes(path, digest, sorted(fixes.values(), key=lambda f: f.row))


def _describe(fix: Fix) -> str:
    return f"relabel to {fix.class_name!r}" if fix.action == RELABEL else fix.action


def load_label_fixes(data_root: str, setting: str = "") -> Optional[LabelFixes]:
    """The fixes a run over `data_root` applies (sidecars.label_fixes_path), parsed; None without a fixes file.
    A file named by data.label_fixes that does not exist is an error."""
    path = sidecars.label_fixes_path(data_root, setting)
    if path is None:
        return None
    data = sidecars.read_label_fixes(path)
    if data is None:
        raise LabelFixesError(f"label fixes {path} (data.label_fixes) does not exist")
    return parse_label_fixes(data, path)


def check_label_fixes(
    fixes: LabelFixes, file_classes: Mapping[str, str], class_names: Sequence[str], spans: Sequence[str] = ()
) -> None:
    """Every fix names a file of the selected spans (`file_classes`: file name -> its class folder) and a relabel
    a class of the data. Raises LabelFixesError on the first that does not."""
    known = set(class_names)
    for fix in fixes.fixes:
        if fix.file not in file_classes:
            selected = f"the selected spans ({', '.join(spans)})" if spans else "the data root"
            raise _error(fixes.path, fix.row, f"{fix.file!r} is not a file of {selected}")
        if fix.action == RELABEL and fix.class_name not in known:
            raise _error(
                fixes.path,
                fix.row,
                f"class {fix.class_name!r} (relabel of {fix.file!r}) does not exist "
                f"(classes: {', '.join(class_names)})",
            )


def applied(fixes: LabelFixes, file_classes: Mapping[str, str]) -> Dict[str, Any]:
    """What ingestion applied, for ingest_report.json's "label_fixes" (and, `counts` and `sha256`, the version's
    record): {path, sha256, counts: {relabelled, dropped, kept}, relabelled: [{file, from, to}], dropped: [{file,
    class}], kept: [file]}."""
    relabelled = [{"file": f.file, "from": file_classes[f.file], "to": f.class_name} for f in fixes.by_action(RELABEL)]
    dropped = [{"file": f.file, "class": file_classes[f.file]} for f in fixes.by_action(DROP)]
    kept = [f.file for f in fixes.by_action(KEEP)]
    return {
        "path": fixes.path,
        "sha256": fixes.sha256,
        "counts": {"relabelled": len(relabelled), "dropped": len(dropped), "kept": len(kept)},
        "relabelled": relabelled,
        "dropped": dropped,
        "kept": kept,
    }


def record_of(applied_fixes: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The version record's data.label_fixes: {path, sha256, counts}; None without fixes."""
    if not applied_fixes:
        return None
    return {key: applied_fixes.get(key) for key in ("path", "sha256", "counts")}


def fingerprint_with_fixes(files_fingerprint: str, sha256: Optional[str]) -> str:
    """The input fingerprint: the files' alone without fixes (records written before fixes existed still match),
    else a hash of both."""
    if not sha256:
        return files_fingerprint
    return "sha256:" + hashlib.sha256(f"{files_fingerprint}\0label_fixes\0{sha256}".encode()).hexdigest()


def counts_text(counts: Optional[Mapping[str, int]]) -> str:
    """`3 relabelled, 1 dropped, 0 kept`."""
    counts = counts or {}
    return ", ".join(f"{int(counts.get(name, 0))} {name}" for name in ("relabelled", "dropped", "kept"))
