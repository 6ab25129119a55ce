"""`python -m mindiff.compare DIR [epochs=[N,...]] [rank_by=METRIC [ascending=false]] [out=PREFIX]`

Side by side, for the runs of a multirun dir: one image with a column per run, headed by what
that run changed, showing its last sample grid (or one column per run and epoch, with
`epochs`: a single run's progress); and a table of each run's final metrics as Markdown and
CSV. Writes PREFIX.png, PREFIX.md, PREFIX.csv (default: DIR/compare). With `rank_by` (a metric of
metrics.json, e.g. eval/class_accuracy), the columns and rows are ordered best first: highest first,
or lowest with ascending=true (for eval/fld); runs without that metric come last.
"""

import csv
import io
import logging
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from PIL import Image, ImageDraw, ImageFont

from mindiff.cli import run_command
from mindiff.config import ConfigError
from mindiff.errors import one_line
from mindiff.files import atomic_write, check_writable_file, save_text
from mindiff.sweep import RunRecord, common_overrides, find_runs, summary_table

HEADER_FONT_SIZE = 14
MAX_GRID_PIXELS = 8192 * 8192  # a grid larger than this is not one a run wrote (16x16 cells of 256 px: 4k x 4k)
log = logging.getLogger(__name__)


@dataclass
class CompareArgs:
    dir: str
    epochs: Optional[List[int]] = None  # default: each run's last grid
    rank_by: Optional[str] = None  # a final metric, e.g. eval/class_accuracy: best run first
    ascending: bool = False  # rank_by's best is its lowest value (eval/fld, final_loss)
    out: Optional[str] = None


def outputs(prefix: Path) -> Dict[str, Path]:
    """PREFIX.png, .md, .csv; a PREFIX given with one of those suffixes is the same prefix."""
    base = prefix.with_suffix("") if prefix.suffix.lower() in (".png", ".md", ".csv") else prefix
    paths = {ext: base.with_name(base.name + ext) for ext in (".png", ".md", ".csv")}
    for path in paths.values():
        check_writable_file(path, "out")
    return paths


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def open_grid(path: Optional[Path]) -> Optional[Image.Image]:
    """A sample grid, decoded now: a torn or foreign file is a grey box (side_by_side), not a traceback."""
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_GRID_PIXELS:
                raise ValueError(f"{im.width}x{im.height} is larger than a sample grid")
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        log.warning("%s cannot be read (%s); its column shows no grid", path, one_line(e)[:200])
        return None


def pick_grid(run: RunRecord, epoch: Optional[int]) -> Optional[Path]:
    samples = run.path / "samples"
    if epoch is not None:
        grid = samples / f"epoch_{epoch:04d}.png"
        return grid if grid.is_file() else None
    grids = sorted(samples.glob("epoch_*.png")) or sorted(samples.glob("step_*.png"))
    return grids[-1] if grids else None


def side_by_side(columns: List[tuple], pad: int = 12) -> Image.Image:
    """columns: (heading, grid image or None); a missing grid is a grey box saying so."""
    font = ImageFont.load_default(size=HEADER_FONT_SIZE)
    width = max((im.width for _, im in columns if im is not None), default=256)
    height = max((im.height for _, im in columns if im is not None), default=256)
    chars = max(12, width // (HEADER_FONT_SIZE // 2 + 1))
    headings = [textwrap.wrap(h, chars) or [""] for h, _ in columns]
    header = (max(len(h) for h in headings) + 1) * (HEADER_FONT_SIZE + 4)
    canvas = Image.new("RGB", (len(columns) * (width + pad) + pad, header + height + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((_, im), lines) in enumerate(zip(columns, headings)):
        x = pad + i * (width + pad)
        draw.multiline_text((x, pad // 2), "\n".join(lines), fill="black", font=font, spacing=4)
        if im is None:
            draw.rectangle((x, header, x + width, header + height), fill=(200, 200, 200))
            draw.text((x + 8, header + 8), "no grid", fill="black", font=font)
        else:
            canvas.paste(im.convert("RGB"), (x, header))
    return canvas


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def compare(args: CompareArgs) -> dict:
    sweep_dir = Path(args.dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"dir={args.dir!r}: no such folder (give a multirun dir, e.g. multirun/mnist_lr)")
    paths = outputs(Path(args.out) if args.out else sweep_dir / "compare")  # before any work
    try:
        runs = find_runs(sweep_dir)
    except OSError as e:
        raise ConfigError(f"dir={args.dir!r}: cannot list it ({e.strerror or e})") from None
    if not runs:
        raise ConfigError(f"{sweep_dir} holds no runs (folders with .hydra/overrides.yaml)")
    if args.rank_by:
        scored = [r for r in runs if is_number(r.metrics.get(args.rank_by))]
        if not scored:
            raise ConfigError(f"rank_by={args.rank_by}: no run in {sweep_dir} has that metric (its metrics.json)")
        ranked = sorted(scored, key=lambda r: r.metrics[args.rank_by], reverse=not args.ascending)
        runs = ranked + [r for r in runs if not is_number(r.metrics.get(args.rank_by))]
    common = common_overrides(runs)
    columns = []
    for run in runs:
        heading = run.changes(common, sep=", ")
        if run.status != "finished":
            heading += f"  [{run.status}]"
        for epoch in args.epochs or [None]:
            grid = pick_grid(run, epoch)
            label = heading if epoch is None else (f"epoch {epoch}" if len(runs) == 1 else f"{heading} @ {epoch}")
            columns.append((label, open_grid(grid)))
    image = side_by_side(columns)
    atomic_write(paths[".png"], lambda f: image.save(f, format="PNG"))

    rows = summary_table(runs)
    keys = list(rows[0])
    csv_text = io.StringIO()
    writer = csv.DictWriter(csv_text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    save_text(csv_text.getvalue(), paths[".csv"])
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    table += ["| " + " | ".join(fmt(row[k]) for k in keys) + " |" for row in rows]
    if common:
        table.append(f"\nShared by all runs: `{' '.join(sorted(common))}`")
    save_text("\n".join(table) + "\n", paths[".md"])
    return {"image": paths[".png"], "table": "\n".join(table), "runs": runs}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and "=" not in argv[0]:  # the folder may be given bare: mindiff.compare multirun/mnist_lr
        argv[0] = f"dir={argv[0]}"
    result = run_command("mindiff.compare", CompareArgs, compare, argv, __doc__)
    print(result["table"])
    print(f"\nwrote {result['image']} (+ .md, .csv)")


if __name__ == "__main__":
    main()
