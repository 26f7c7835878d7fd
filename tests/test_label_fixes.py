"""Label fixes (issue 34): the fixes file's parser and checks, applying relabel/drop/keep to the listing, the input
fingerprint, the review rows, the Trainer's check leaving kept files out. No pipeline runs (the end-to-end test
is the chain in tests/test_label_issues.py; the CLI's bad-fixes rows are in tests/test_cli_battery.py)."""

import hashlib
import os

import pytest

from components import label_fixes as lf
from components.image_listing import (
    apply_label_fixes,
    check_input_and_fixes,
    check_listing,
    input_fingerprint,
    list_input,
    make_input_config,
)
from serving import sidecars

HEADER = "file,action,class\n"


def parse(text: str) -> lf.LabelFixes:
    return lf.parse_label_fixes(text.encode(), "/data/label_fixes.csv")


def test_rows_with_an_action_are_read_and_other_columns_ignored():
    review = ",".join(sidecars.REVIEW_COLUMNS) + "\n"
    fixes = parse(
        review
        + "span-3/train/circle/a.png,relabel,square,span-3,circle,square,0.91\n"
        + "span-3/train/circle/b.png,,square,span-3,circle,square,0.8\n"  # not decided: ignored
        + "\n"  # a blank line
        + "./span-1/train/square/c.png, Drop ,,span-1,square,circle,0.7\n"
        + "span-1/train/square/d.png,keep,circle,span-1,square,circle,0.6\n"
        + "span-3/train/circle/a.png,relabel,square,span-3,circle,square,0.91\n"  # the same decision twice: fine
    )
    assert [(f.file, f.action, f.class_name, f.row) for f in fixes.fixes] == [
        ("span-3/train/circle/a.png", "relabel", "square", 2),
        ("span-1/train/square/c.png", "drop", "", 5),
        ("span-1/train/square/d.png", "keep", "", 6),
    ]
    assert fixes.sha256 == "sha256:" + hashlib.sha256(fixes_bytes(fixes)).hexdigest()


def fixes_bytes(fixes):
    review = ",".join(sidecars.REVIEW_COLUMNS) + "\n"
    return (
        review
        + "span-3/train/circle/a.png,relabel,square,span-3,circle,square,0.91\n"
        + "span-3/train/circle/b.png,,square,span-3,circle,square,0.8\n"
        + "\n"
        + "./span-1/train/square/c.png, Drop ,,span-1,square,circle,0.7\n"
        + "span-1/train/square/d.png,keep,circle,span-1,square,circle,0.6\n"
        + "span-3/train/circle/a.png,relabel,square,span-3,circle,square,0.91\n"
    ).encode()


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "row 1: no header row"),
        ("file,class\na.png,x\n", "row 1: the header has no 'action' column"),
        (HEADER + "a.png,keep,\nb.png,drop\n", "row 3: has 2 fields, the header has 3 (a malformed row)"),
        (HEADER + "a.png,move,cats\n", "row 2: unknown action 'move' for 'a.png'"),
        (HEADER + ",drop,\n", "row 2: action 'drop' names no file"),
        (HEADER + "a.png,relabel,\n", "row 2: relabel of 'a.png' names no class"),
        (HEADER + "a.png,drop,\nb.png,keep,\na.png,keep,\n", "row 4: 'a.png' is named twice with different actions"),
        (HEADER + "a.png,relabel,cats\na.png,relabel,dogs\n", "(row 2: relabel to 'cats'; here: relabel to 'dogs')"),
    ],
)
def test_malformed_fixes_name_the_file_the_row_and_the_problem(text, says):
    with pytest.raises(lf.LabelFixesError) as caught:
        parse(text)
    assert str(caught.value).startswith("label fixes /data/label_fixes.csv ")
    assert says in str(caught.value)


def test_text_that_is_not_utf8_is_refused():
    with pytest.raises(lf.LabelFixesError, match="the file: is not UTF-8 text"):
        lf.parse_label_fixes(b"file,action,class\n\xff\xfe,drop,\n", "x.csv")


def image(path, data=b"not decoded here"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def spans(tmp_path):
    """Two pre-split spans, classes circle and square, two training and one validation image each."""
    for span in (1, 2):
        for split, count in (("train", 2), ("validation", 1)):
            for name in ("circle", "square"):
                for i in range(count):
                    image(str(tmp_path / f"span-{span}" / split / name / f"{name}_{i}.png"))
    return tmp_path


def listing_of(root, spans=("span-1", "span-2")):
    listing = list_input(str(root), make_input_config("presplit", "train", "validation"), list(spans))
    return listing, check_listing(listing)


def test_relabel_drop_and_keep_are_applied_to_the_listing(spans):
    listing, classes = listing_of(spans)
    fixes = parse(
        HEADER
        + "span-2/train/circle/circle_0.png,relabel,square\n"
        + "span-2/validation/square/square_0.png,drop,\n"
        + "span-1/train/square/square_1.png,keep,\n"
    )
    fixed = apply_label_fixes(listing, fixes, classes)
    files = {f.path: f.class_name for f in fixed.files()}
    assert files["span-2/train/circle/circle_0.png"] == "square"  # the image stays where it is
    assert "span-2/validation/square/square_0.png" not in files
    assert [f.path for f in fixed.dropped] == ["span-2/validation/square/square_0.png"]
    assert files["span-1/train/square/square_1.png"] == "square"
    assert len(files) == len(listing.files()) - 1
    assert fixed.label_fixes == {
        "path": "/data/label_fixes.csv",
        "sha256": fixes.sha256,
        "counts": {"relabelled": 1, "dropped": 1, "kept": 1},
        "relabelled": [{"file": "span-2/train/circle/circle_0.png", "from": "circle", "to": "square"}],
        "dropped": [{"file": "span-2/validation/square/square_0.png", "class": "square"}],
        "kept": ["span-1/train/square/square_1.png"],
    }
    assert lf.record_of(fixed.label_fixes) == {
        "path": "/data/label_fixes.csv",
        "sha256": fixes.sha256,
        "counts": {"relabelled": 1, "dropped": 1, "kept": 1},
    }
    # Without fixes, nothing changes (the fingerprint included: records written before fixes existed still match).
    assert apply_label_fixes(listing, None, classes) is listing
    assert fixed.fingerprint() == lf.fingerprint_with_fixes(listing.fingerprint(), fixes.sha256)
    assert fixed.fingerprint() != listing.fingerprint()


@pytest.mark.parametrize(
    "row, says",
    [
        (
            "span-3/train/circle/circle_0.png,keep,",
            "row 2: 'span-3/train/circle/circle_0.png' is not a file of the selected spans (span-1, span-2)",
        ),
        (
            "span-1/train/circle/circle_0.png,relabel,triangle",
            "row 2: class 'triangle' (relabel of "
            "'span-1/train/circle/circle_0.png') does not exist (classes: circle, square)",
        ),
    ],
)
def test_fixes_naming_other_files_or_classes_are_refused(spans, row, says):
    listing, classes = listing_of(spans)
    with pytest.raises(lf.LabelFixesError, match="label fixes /data/label_fixes.csv ") as caught:
        apply_label_fixes(listing, parse(HEADER + row + "\n"), classes)
    assert says in str(caught.value)


def test_a_span_left_out_by_data_spans_is_not_selected(spans):
    listing, classes = listing_of(spans, spans=("span-2",))
    with pytest.raises(lf.LabelFixesError, match=r"not a file of the selected spans \(span-2\)"):
        apply_label_fixes(listing, parse(HEADER + "span-1/train/circle/circle_0.png,drop,\n"), classes)


def test_the_fixes_file_at_the_data_root_joins_the_fingerprint(spans):
    config = make_input_config("presplit", "train", "validation")
    selected = ["span-1", "span-2"]
    without = input_fingerprint(str(spans), config, selected)
    assert check_input_and_fixes(str(spans), config, selected) is None
    (spans / "label_fixes.csv").write_text(HEADER + "span-1/train/circle/circle_0.png,relabel,square\n")
    with_fixes = input_fingerprint(str(spans), config, selected)
    assert with_fixes != without
    assert check_input_and_fixes(str(spans), config, selected)["counts"]["relabelled"] == 1
    (spans / "label_fixes.csv").write_text(HEADER + "span-1/train/circle/circle_0.png,drop,\n")
    assert input_fingerprint(str(spans), config, selected) not in (without, with_fixes)
    # A row nobody decided on changes the bytes, so the fingerprint too: the file is what was decided on.
    # data.label_fixes names another file; one that does not exist is an error.
    other = spans / "elsewhere.csv"
    other.write_text(HEADER)
    assert input_fingerprint(str(spans), config, selected, str(other)) != without  # an empty file still counts
    with pytest.raises(lf.LabelFixesError, match="does not exist"):
        input_fingerprint(str(spans), config, selected, str(spans / "nope.csv"))


def test_the_review_rows_are_a_fixes_file_with_the_suggestions_prefilled(tmp_path):
    from pipeline.cli_review import review_rows

    issues = {
        "images": 10,
        "flagged": [
            {
                "file_name": "span-3/train/circle/a.png",
                "given": "circle",
                "suggested": "square",
                "given_probability": 0.05,
                "suggested_probability": 0.93,
            },
            {
                "file_name": "cats/b.jpg",
                "given": "cats",
                "suggested": "dogs",
                "given_probability": 0.2,
                "suggested_probability": 0.7,
            },
        ],
    }
    path = sidecars.write_review(str(tmp_path / "review.csv"), review_rows(issues))
    text = open(path).read()
    assert text.splitlines() == [
        "file,action,class,span,given_class,suggested_class,probability",
        "span-3/train/circle/a.png,,square,span-3,circle,square,0.93",
        "cats/b.jpg,,dogs,,cats,dogs,0.7",
    ]
    assert parse(text).fixes == []  # nothing decided yet
    accepted = text.replace(",,square,", ",relabel,square,")
    assert [(f.file, f.action, f.class_name) for f in parse(accepted).fixes] == [
        ("span-3/train/circle/a.png", "relabel", "square")
    ]


def test_kept_files_leave_the_flagged_list_and_their_folders_counts():
    from components import data_findings as df

    flagged = [
        {"file_name": "span-1/train/circle/a.png", "given": "circle", "suggested": "square"},
        {"file_name": "span-1/train/circle/b.png", "given": "circle", "suggested": "square"},
        {"file_name": "span-1/train/square/c.png", "given": "square", "suggested": "circle"},
    ]
    groups = [
        {
            "folder": "span-1/train/circle",
            "span": "span-1",
            "class": "circle",
            "images": 10,
            "flagged": 2,
            "looks_like": {"square": 2},
        },
        {
            "folder": "span-1/train/square",
            "span": "span-1",
            "class": "square",
            "images": 10,
            "flagged": 1,
            "looks_like": {"circle": 1},
        },
    ]
    issues = {"images": 20, "flagged_count": 3, "flagged_fraction": 0.15, "groups": groups, "flagged": flagged}
    findings = df.Findings(issues, None, None, 1.0)
    left = df.leave_out_kept(findings, ["span-1/train/square/c.png", "span-1/train/circle/a.png", "other.png"])
    out = left.label_issues
    assert [e["file_name"] for e in out["flagged"]] == ["span-1/train/circle/b.png"]
    assert (out["flagged_count"], out["flagged_fraction"], out["kept_left_out"]) == (1, 0.05, 2)
    assert [(g["folder"], g["flagged"], g["looks_like"]) for g in out["groups"]] == [
        ("span-1/train/circle", 1, {"square": 1}),
        ("span-1/train/square", 0, {}),
    ]
    assert issues["flagged_count"] == 3 and groups[0]["flagged"] == 2  # the input is not changed
    assert df.leave_out_kept(findings, []) is findings
    assert df.leave_out_kept(None, ["a"]) is None
    assert df.leave_out_kept(df.Findings({"error": "x"}, None, None, 0.0), ["a"]).label_issues == {"error": "x"}
