"""Regenerates the docs' pictures (docs/images/*.png) from a real run: `make docs-pictures`.

    report.png           the top of the HTML run report: verdict, components, change check, ingestion, training
    report-findings.png  the report's suspected label errors and what changed in the training data
    summary.png          the console summary `ftune run` ends with
    versions.png         the `ftune versions` table

Two small runs on generated sample data, as the weekly loop would see them: span-1, then span-2 with a few circles
filed under `square` (so the label check has something to flag and the change check has a new span). Both write to a
scratch folder (/tmp/ftune-demo, so the paths in the pictures read the same each time; removed at the end unless
--keep). Then every picture is a screenshot taken by headless Chromium: the report page itself (sliced into the two
parts above), and the console output written into a small dark HTML page with a monospace <pre> (that page is the
"terminal": the text is the commands' real output, unchanged). Each PNG is quantized to 256 colours (Pillow) to stay
small.

Needs Chromium (Debian: `apt-get install -y chromium`; it is not a dependency of ftune) and the MobileNetV2 weights:
FTUNE_WEIGHTS (the Makefile sets it), else ../shared/weights/mobilenet_v2_1.0_224_no_top.h5. 3 to 4 minutes on two
cores. Not part of `make docs` or CI: the pictures are committed, and regenerated when the report or the console
output changes.
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = os.path.join(REPO, "docs", "images")
FTUNE = os.path.join(REPO, ".venv", "bin", "ftune")
SHARED_WEIGHTS = os.path.join(os.path.dirname(REPO), "shared", "weights", "mobilenet_v2_1.0_224_no_top.h5")
WORK = os.path.join(tempfile.gettempdir(), "ftune-demo")
MARKER = ".ftune-docs-pictures"  # WORK is only ever removed when this script made it
# Small settings: the pictures show what the report and the console look like, not a good model.
RUN_SETTINGS = ["trainer.image_size=96", "trainer.phase1_epochs=3", "trainer.phase2_epochs=2"]
MISLABELLED = 8  # span-2 circles moved into span-2/square
MAX_BYTES = 300_000
REPORT_WIDTH = 1180  # the report's body is at most 1100 px wide
TALL = 4000  # window height for a screenshot; the empty rows below the content are cut off


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def find_chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    fail(
        "Chromium not found: install it (Debian/Ubuntu: `sudo apt-get install -y chromium`) "
        "or set CHROMIUM=/path/to/chromium"
    )


def find_weights() -> str:
    weights = os.environ.get("FTUNE_WEIGHTS") or SHARED_WEIGHTS
    if not os.path.isfile(weights):
        fail(f"weights file {weights} not found: set FTUNE_WEIGHTS=/path/to/mobilenet_v2_1.0_224_no_top.h5")
    return weights


def say(message: str) -> None:
    print(f"[pictures] {time.strftime('%H:%M:%S')} {message}", flush=True)


def ftune(args: Sequence[str], env: dict, ok: Tuple[int, ...] = (0,)) -> str:
    """Runs `ftune ARGS`; returns its console (stdout and stderr as the user sees them, interleaved)."""
    proc = subprocess.run(
        [FTUNE, *args], env=env, cwd=WORK, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if proc.returncode not in ok:
        sys.stderr.write(proc.stdout[-4000:])
        fail(f"`ftune {' '.join(args)}` exited {proc.returncode} (its last output above)")
    return proc.stdout


# --- screenshots --------------------------------------------------------------------------------------------------


def screenshot(chromium: str, page: str, out: str, width: int, height: int = TALL) -> None:
    cmd = [
        chromium,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
        f"--screenshot={out}",
        "file://" + os.path.abspath(page),
    ]
    # Chromium logs D-Bus and GPU complaints on stderr in a container: shown only when no picture came out.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    if proc.returncode != 0 or not os.path.isfile(out):
        sys.stderr.write(proc.stdout[-3000:])
        fail(f"Chromium did not write {out} (exit {proc.returncode})")


def trim_and_save(raw: str, out: str, margin: int = 16) -> Tuple[int, int, int]:
    """Cuts the rows of background below the content, quantizes to 256 colours, writes out; (width, height, bytes)."""
    image = Image.open(raw).convert("RGB")
    width, height = image.size
    background = image.getpixel((width - 1, height - 1))
    pixels = image.load()
    bottom = height - 1
    while bottom > 0 and all(pixels[x, bottom] == background for x in range(0, width, 2)):
        bottom -= 1
    if bottom <= margin:
        fail(f"{raw} is blank (one colour): the page did not render")
    if bottom >= height - 1:
        print(f"[pictures] warning: {os.path.basename(out)}: the content may go on below {height} px", flush=True)
    image = image.crop((0, 0, width, min(height, bottom + margin)))
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    return image.size[0], image.size[1], os.path.getsize(out)


def report_slice(index_html: str, start: Optional[str], end: Optional[str]) -> str:
    """The report page with only the body between two markers (its <head>, so its styles, kept); written next to
    index.html so that the figures' relative links resolve."""
    with open(index_html, encoding="utf-8") as f:
        page = f.read()
    body = page.index("<body>") + len("<body>")
    lo = page.index(start) if start else body
    hi = page.index(end) if end else len(page)
    path = os.path.join(os.path.dirname(index_html), f"_picture_{len(os.listdir(os.path.dirname(index_html)))}.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page[:body] + page[lo:hi] + "</body></html>")
    return path


TERMINAL_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>
html, body {{ margin: 0; background: #1e1e1e; }}
pre {{ margin: 0; padding: 14px 18px; color: #d4d4d4; font: 14px/1.45 "DejaVu Sans Mono", monospace;
       white-space: pre-wrap; overflow-wrap: anywhere; }}
.prompt {{ color: #6a9955; }} .dim {{ color: #808080; }}
</style></head><body><pre>{body}</pre></body></html>
"""
CHAR_PX = 8.5  # DejaVu Sans Mono at 14 px


def terminal_picture(chromium: str, command: str, lines: List[str], out: str, work: str, columns: int = 132) -> tuple:
    """The "terminal" capture: the command and its output in a dark monospace <pre>, screenshot by Chromium.
    Lines longer than `columns` wrap, as in a terminal that wide."""
    body = f'<span class="prompt">$</span> {html.escape(command)}\n'
    for line in lines:
        cls = "dim" if line.startswith("\x00") else ""
        text = html.escape(line.lstrip("\x00"))
        body += f'<span class="{cls}">{text}</span>\n' if cls else text + "\n"
    width = int(min(columns, max(len(line) for line in [command, *lines]) + 2) * CHAR_PX) + 40
    page = os.path.join(work, os.path.basename(out) + ".html")
    with open(page, "w", encoding="utf-8") as f:
        f.write(TERMINAL_PAGE.format(body=body.rstrip("\n")))
    raw = page + ".raw.png"
    screenshot(chromium, page, raw, width, height=1600)
    return trim_and_save(raw, out)


def summary_lines(console: str) -> List[str]:
    """The run summary block at the end of `ftune run`'s console (from its first ==== rule), after a dimmed line
    standing for the progress lines above it."""
    lines = console.rstrip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("====")), None)
    if start is None:
        fail("no run summary (a line of ====) in the run's console")
    progress = sum(1 for line in lines[:start] if line.startswith("[ftune]"))
    return [f"\x00[ftune] ... {progress} progress lines: one per component, each training epoch ...", *lines[start:]]


# --- the runs -----------------------------------------------------------------------------------------------------


def mislabel(span: str, count: int) -> None:
    """Moves `count` circles of a span into its square folder: what a careless labeller does."""
    circles = sorted(os.listdir(os.path.join(span, "circle")))[:count]
    for name in circles:
        os.rename(os.path.join(span, "circle", name), os.path.join(span, "square", "mislabelled_" + name))


def run_the_loop(env: dict, run_args: List[str], data: str, root: str) -> Tuple[str, str]:
    """The two runs and `ftune versions`; returns the second run's console and the versions table (both also saved
    in WORK, for --reuse)."""
    started = time.time()
    say("span-1: sample data, then the first run (about 80 s)")
    ftune(["sample-data", os.path.join(data, "span-1"), "--seed", "0"], env)
    ftune(run_args, env)
    say(f"span-2: sample data with {MISLABELLED} circles filed under square, then the second run")
    ftune(["sample-data", os.path.join(data, "span-2"), "--seed", "1"], env)
    mislabel(os.path.join(data, "span-2"), MISLABELLED)
    console = ftune(run_args, env, ok=(0, 4))  # 4: the gate refused; still a report and a summary to show
    versions = ftune(["versions", "--pipeline-root", root], env)
    for name, text in (("console.txt", console), ("versions.txt", versions)):
        with open(os.path.join(WORK, name), "w", encoding="utf-8") as f:
            f.write(text)
    say(f"runs done in {time.time() - started:.0f} s; screenshots")
    return console, versions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help=f"keep {WORK} (the runs, the report) afterwards")
    parser.add_argument(
        "--reuse", action="store_true", help=f"no runs: take the screenshots again from what --keep left in {WORK}"
    )
    args = parser.parse_args()

    chromium = find_chromium()
    data, root = os.path.join(WORK, "images"), os.path.join(WORK, "run")
    settings = [arg for key in RUN_SETTINGS for arg in ("--set", key)]
    run_args = ["run", "--data-root", data, "--pipeline-root", root, *settings]
    os.makedirs(IMAGES, exist_ok=True)
    if args.reuse:
        if not os.path.isfile(os.path.join(WORK, "versions.txt")):
            fail(f"nothing to reuse in {WORK}: run once with --keep first")
        with open(os.path.join(WORK, "console.txt"), encoding="utf-8") as f:
            console = f.read()
        with open(os.path.join(WORK, "versions.txt"), encoding="utf-8") as f:
            versions = f.read()
    else:
        weights = find_weights()
        if not os.access(FTUNE, os.X_OK):
            fail(f"{FTUNE} not found: run `make setup` first")
        if os.path.exists(WORK):
            if not os.path.exists(os.path.join(WORK, MARKER)):
                fail(f"{WORK} exists and was not made by this script: move it away first")
            shutil.rmtree(WORK)
        os.makedirs(WORK)
        open(os.path.join(WORK, MARKER), "w").close()
        env = dict(os.environ, FTUNE_WEIGHTS=weights, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        console, versions = run_the_loop(env, run_args, data, root)

    index = os.path.join(root, "report", "index.html")
    if not os.path.isfile(index):
        fail(f"the run wrote no report at {index}")
    pictures = []
    for name, start, end in (
        ("report.png", None, "<h2>Suspected label errors</h2>"),
        ("report-findings.png", "<h2>Suspected label errors</h2>", "<h2>Evaluation on the eval split</h2>"),
    ):
        page = report_slice(index, start, end)
        raw = os.path.join(WORK, name + ".raw.png")
        screenshot(chromium, page, raw, REPORT_WIDTH)
        os.remove(page)
        pictures.append((name, trim_and_save(raw, os.path.join(IMAGES, name))))

    command = "ftune " + " ".join(run_args)
    pictures.append(
        (
            "summary.png",
            terminal_picture(chromium, command, summary_lines(console), os.path.join(IMAGES, "summary.png"), WORK),
        )
    )
    pictures.append(
        (
            "versions.png",
            terminal_picture(
                chromium,
                f"ftune versions --pipeline-root {root}",
                versions.rstrip("\n").splitlines(),
                os.path.join(IMAGES, "versions.png"),
                WORK,
            ),
        )
    )

    for name, (width, height, size) in pictures:
        flag = "  (over 300 KB: make it smaller)" if size > MAX_BYTES else ""
        say(f"docs/images/{name}: {width}x{height}, {size // 1024} KB{flag}")
    if args.keep or args.reuse:
        say(f"kept {WORK}")
    else:
        shutil.rmtree(WORK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
