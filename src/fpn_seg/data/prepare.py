"""`prepare`: official Cityscapes / ADE20K folders or zips -> a checked Parquet `DatasetDict` on disk.

    python -m fpn_seg.data.prepare cityscapes /data/cityscapes --output-dir /data/cityscapes-parquet
    python -m fpn_seg.data.prepare cityscapes leftImg8bit_trainvaltest.zip gtFine_trainvaltest.zip --output-dir out
    python -m fpn_seg.data.prepare ade20k ADEChallengeData2016.zip --output-dir /data/ade20k-parquet

Every pair is decoded and checked (each image has its label and vice versa, both readable, same size, label values in
the dataset's label set); counts are compared with the official ones. The output is the Hub's Parquet layout::

    output_dir/data/{train,validation,test}-0000i-of-0000n.parquet   (columns image, label: datasets.Image())
    output_dir/summary.json                                          (counts, sizes, class histogram)

Labels are stored as the loaders store them (Cityscapes: train ids; ADE20K: raw annotations), with their label-policy
mark; load the result with [`load_prepared`] or `datasets.load_dataset("parquet", data_dir=output_dir)`. Files are
written to a hidden temporary folder and swapped in by renames at the end (`fpn_seg.atomic.replace_directory`), so a
failed check, an error or a `kill -9` leaves the previous `data/` (or none), never a half-written dataset.
"""

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import DatasetDict, load_dataset

from ..atomic import replace_directory, temporary_sibling
from ..cli import UsageError, run_command
from ..label_sets import ADE20K_CLASSES, CITYSCAPES_CLASSES
from .ade20k import SPLIT_FOLDERS as ADE20K_SPLIT_FOLDERS
from .ade20k import SPLIT_KEYS as ADE20K_SPLIT_KEYS
from .ade20k import ade20k_pairs
from .cityscapes import SPLIT_FOLDERS as CITYSCAPES_SPLIT_FOLDERS
from .cityscapes import SPLIT_KEYS as CITYSCAPES_SPLIT_KEYS
from .cityscapes import cityscapes_pairs
from .folders import LABEL_FEATURES, DataSource, ImageLabelPair, LabelConversion, iter_pair_records

OFFICIAL_COUNTS = {
    "cityscapes": {"train": 2975, "validation": 500, "test": 1525},
    "ade20k": {"train": 20210, "validation": 2000},
}
STORED_VALUE_NAMES = {
    "cityscapes": {**dict(enumerate(CITYSCAPES_CLASSES)), 255: "(ignore)"},
    "ade20k": {0: "(other: ignored after reduce_labels)", **{i + 1: name for i, name in enumerate(ADE20K_CLASSES)}},
}


@dataclass
class SplitSummary:
    """What `prepare` wrote for one split: counts, image sizes, shards, and a histogram of the stored label values."""

    name: str
    num_examples: int = 0
    official_count: int | None = None
    sizes: Counter = field(default_factory=Counter)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    files: list[str] = field(default_factory=list)

    def to_dict(self, value_names: dict[int, str]) -> dict:
        total = max(int(self.histogram.sum()), 1)
        return {
            "num_examples": self.num_examples,
            "official_count": self.official_count,
            "sizes": {f"{h}x{w}": count for (h, w), count in self.sizes.most_common()},
            "files": self.files,
            "pixels": {
                str(v): {"name": value_names.get(v, "?"), "count": int(c), "fraction": int(c) / total}
                for v, c in enumerate(self.histogram)
                if c
            },
        }


@dataclass
class PrepareSummary:
    """The result of a `prepare` run (also written to `output_dir/summary.json`)."""

    dataset: str
    output_dir: Path
    label_policy: str
    splits: dict[str, SplitSummary]
    value_names: dict[int, str]

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "label_policy": self.label_policy,
            "splits": {name: split.to_dict(self.value_names) for name, split in self.splits.items()},
        }

    def format(self) -> str:
        """The summary as text tables: splits, then the class histogram (share of each split's pixels)."""
        lines = [f"Prepared {self.dataset} -> {self.output_dir}", f"Labels: {self.label_policy}", ""]
        lines.append(f"{'split':<12}{'examples':>10}{'official':>10}{'shards':>8}  image sizes (HxW: count)")
        for split in self.splits.values():
            sizes = ", ".join(f"{h}x{w}: {c}" for (h, w), c in split.sizes.most_common(3))
            if len(split.sizes) > 3:
                sizes += f", ... ({len(split.sizes)} sizes)"
            official = "-" if split.official_count is None else str(split.official_count)
            flag = "" if split.official_count in (None, split.num_examples) else "  (differs from the official count)"
            lines.append(f"{split.name:<12}{split.num_examples:>10}{official:>10}{len(split.files):>8}  {sizes}{flag}")
        lines += ["", "Class histogram (% of pixels):"]
        names = list(self.splits)
        lines.append(f"{'value':>5}  {'class':<38}" + "".join(f"{name:>12}" for name in names))
        present = sorted({v for split in self.splits.values() for v in np.flatnonzero(split.histogram)})
        for value in present:
            cells = ""
            for split in self.splits.values():
                total = max(int(split.histogram.sum()), 1)
                cells += f"{100 * split.histogram[value] / total:>11.2f}%"
            lines.append(f"{value:>5}  {self.value_names.get(int(value), '?')[:38]:<38}{cells}")
        absent = [name for v, name in self.value_names.items() if v not in present]
        if absent:
            lines.append(f"Absent from every split: {', '.join(absent)}")
        return "\n".join(lines)


def _write_split(
    source: DataSource,
    pairs: Sequence[ImageLabelPair],
    conversion: LabelConversion,
    summary: SplitSummary,
    data_dir: Path,
    *,
    rows_per_shard: int,
    rows_per_group: int,
    num_proc: int,
    progress: bool,
) -> None:
    num_shards = max(1, -(-len(pairs) // rows_per_shard))
    schema = LABEL_FEATURES.arrow_schema
    records = iter_pair_records(
        source,
        pairs,
        conversion,
        decode=True,
        embed_image=True,
        num_proc=num_proc,
        desc=summary.name,
        progress=progress,
    )
    for shard in range(num_shards):
        name = f"{summary.name}-{shard:05d}-of-{num_shards:05d}.parquet"
        count = min(rows_per_shard, len(pairs) - shard * rows_per_shard)
        with pq.ParquetWriter(data_dir / name, schema) as writer:
            rows: list[dict] = []
            for _ in range(count):
                record = next(records)
                rows.append({"image": record.image, "label": record.label})
                summary.sizes[record.size] += 1
                summary.histogram += record.histogram
                if len(rows) == rows_per_group:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    rows = []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        summary.files.append(f"data/{name}")
        summary.num_examples += count


def _prepare(
    dataset: str,
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    splits: Sequence[tuple[str, str]],
    pairs_of_split: Callable[[DataSource, str], tuple[list[ImageLabelPair], LabelConversion]],
    *,
    rows_per_shard: int,
    rows_per_group: int,
    num_proc: int,
    progress: bool,
    overwrite: bool,
) -> PrepareSummary:
    output_dir = Path(output_dir)
    if (output_dir / "data").exists() and not overwrite:
        raise FileExistsError(
            f"{output_dir / 'data'} exists; pass overwrite=True (--overwrite) to replace it."
        )
    source = DataSource(sources)
    planned = [(key, *pairs_of_split(source, split)) for split, key in splits]  # every split's pairs checked first
    # Written under a hidden sibling name, then swapped in by renames: a crash never leaves a partial data/ that loads.
    temporary = temporary_sibling(output_dir / "data")
    summaries: dict[str, SplitSummary] = {}
    try:
        for key, pairs, conversion in planned:
            summaries[key] = SplitSummary(key, official_count=OFFICIAL_COUNTS[dataset].get(key))
            _write_split(
                source,
                pairs,
                conversion,
                summaries[key],
                temporary,
                rows_per_shard=rows_per_shard,
                rows_per_group=rows_per_group,
                num_proc=num_proc,
                progress=progress,
            )
        replace_directory(temporary, output_dir / "data")
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    summary = PrepareSummary(
        dataset, output_dir, planned[0][2].policy.description, summaries, STORED_VALUE_NAMES[dataset]
    )
    summary_file = output_dir / "summary.json"
    partial_summary = summary_file.with_name(f".summary.json.{os.getpid()}.partial")
    partial_summary.write_text(json.dumps(summary.to_dict(), indent=2))
    os.replace(partial_summary, summary_file)
    return summary


def prepare_cityscapes(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    splits: Sequence[str] = ("train", "val"),
    label_type: str = "auto",
    *,
    rows_per_shard: int = 500,
    rows_per_group: int = 64,
    num_proc: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> PrepareSummary:
    """Cityscapes folder or zips -> `output_dir/data/*.parquet` (labels as train ids). See the module docstring."""
    for split in splits:
        if split not in CITYSCAPES_SPLIT_FOLDERS:
            raise UsageError(f"unknown Cityscapes split {split!r}; expected {sorted(CITYSCAPES_SPLIT_FOLDERS)}.")
    keys = [(split, CITYSCAPES_SPLIT_KEYS[CITYSCAPES_SPLIT_FOLDERS[split]]) for split in splits]
    return _prepare(
        "cityscapes",
        sources,
        output_dir,
        keys,
        lambda source, split: cityscapes_pairs(source, split, label_type),
        rows_per_shard=rows_per_shard,
        rows_per_group=rows_per_group,
        num_proc=num_proc,
        progress=progress,
        overwrite=overwrite,
    )


def prepare_ade20k(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    splits: Sequence[str] = ("train", "validation"),
    *,
    rows_per_shard: int = 2000,
    rows_per_group: int = 100,
    num_proc: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> PrepareSummary:
    """ADE20K folder or zip -> `output_dir/data/*.parquet` (raw annotations). See the module docstring."""
    for split in splits:
        if split not in ADE20K_SPLIT_FOLDERS:
            raise UsageError(f"unknown ADE20K split {split!r}; expected {sorted(ADE20K_SPLIT_FOLDERS)}.")
    keys = [(split, ADE20K_SPLIT_KEYS[ADE20K_SPLIT_FOLDERS[split]]) for split in splits]
    return _prepare(
        "ade20k",
        sources,
        output_dir,
        keys,
        ade20k_pairs,
        rows_per_shard=rows_per_shard,
        rows_per_group=rows_per_group,
        num_proc=num_proc,
        progress=progress,
        overwrite=overwrite,
    )


def load_prepared(path: str | os.PathLike, **load_dataset_kwargs) -> DatasetDict:
    """The `DatasetDict` written by `prepare` (`image` / `label` Image columns), via `load_dataset("parquet")`."""
    data_dir = Path(path) / "data"
    files: dict[str, list[str]] = {}
    for file in sorted(data_dir.glob("*.parquet")):
        files.setdefault(file.name.rsplit("-", 3)[0], []).append(str(file))
    if not files:
        raise FileNotFoundError(f"load_prepared: no Parquet files under {data_dir} (run `prepare` first).")
    return load_dataset("parquet", data_files=files, **load_dataset_kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpn-seg prepare",
        description="Check the official Cityscapes / ADE20K files and write them as a Parquet DatasetDict.",
    )
    parser.add_argument("dataset", choices=["cityscapes", "ade20k"])
    parser.add_argument("sources", nargs="+", help="dataset folder(s) and/or the official zip archive(s)")
    parser.add_argument("--output-dir", "-o", required=True, help="where data/*.parquet and summary.json go")
    parser.add_argument("--splits", nargs="+", help="default: train val (Cityscapes), train validation (ADE20K)")
    parser.add_argument("--label-type", default="auto", choices=["auto", "trainIds", "labelIds"], help="Cityscapes")
    parser.add_argument("--rows-per-shard", type=int, help="examples per Parquet file")
    parser.add_argument("--num-proc", type=int, default=min(4, os.cpu_count() or 1), help="reading processes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output_dir/data")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = {"num_proc": args.num_proc, "progress": not args.no_progress, "overwrite": args.overwrite}
    if args.rows_per_shard:
        options["rows_per_shard"] = args.rows_per_shard
    if args.splits:
        options["splits"] = args.splits

    def work() -> None:
        if args.dataset == "cityscapes":
            summary = prepare_cityscapes(args.sources, args.output_dir, label_type=args.label_type, **options)
        else:
            summary = prepare_ade20k(args.sources, args.output_dir, **options)
        print(summary.format())

    # Missing sources, an existing output and unknown splits are usage errors; invalid files (ValueError) failures.
    return run_command("prepare", work, failed=(ValueError,))


__all__ = [
    "OFFICIAL_COUNTS",
    "PrepareSummary",
    "SplitSummary",
    "build_parser",
    "load_prepared",
    "main",
    "prepare_ade20k",
    "prepare_cityscapes",
]


if __name__ == "__main__":
    sys.exit(main())
