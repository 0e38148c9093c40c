"""Synthetic Kaggle competition downloads, deterministic from a seed.

`generate("planet", root)` writes `root/planet-understanding-the-amazon-from-space/` laid out
exactly like Kaggle's download (7z-compressed tars of 256x256 JPEGs, zipped CSVs) with learnable
images and realistic tag frequencies; `generate("dogs-vs-cats", root)` does the same for Dogs vs
Cats Redux. The hidden ground truth goes to `<slug>/_private/solution.csv`. The archive writers
are reusable on their own.
"""

from planet.synthetic.archives import (
    DEFAULT_LZMA2_PRESET,
    FIXED_MTIME,
    csv_bytes,
    write_7z_single,
    write_csv,
    write_csv_zip,
    write_tar,
    write_tar_7z,
    write_zip,
)
from planet.synthetic.build import (
    DEFAULT_SIZES,
    PLANET_SAMPLE_TAGS,
    PRIVATE_DIR,
    PUBLIC_FRACTION,
    SOLUTION_CSV,
    generate,
    resolve_sizes,
)
from planet.synthetic.planet_amazon import expected_frequencies, tag_string
from planet.synthetic.planet_amazon import sample_labels as sample_planet_labels

__all__ = [
    "DEFAULT_LZMA2_PRESET",
    "DEFAULT_SIZES",
    "FIXED_MTIME",
    "PLANET_SAMPLE_TAGS",
    "PRIVATE_DIR",
    "PUBLIC_FRACTION",
    "SOLUTION_CSV",
    "csv_bytes",
    "expected_frequencies",
    "generate",
    "resolve_sizes",
    "sample_planet_labels",
    "tag_string",
    "write_7z_single",
    "write_csv",
    "write_csv_zip",
    "write_tar",
    "write_tar_7z",
    "write_zip",
]
