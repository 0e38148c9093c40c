"""Where each stage keeps its outputs under the data directory.

```
<data_dir>/<competition-slug>/
    raw/                     Kaggle downloads + manifest.json (sizes, sha256)
    tables/                  unzipped CSVs (labels, sample submission) + manifest.json
    shards/original/<split>/ original JPEG bytes in parquet shards + manifest.json
    images/<split>/          optional plain folder layout (extract --write-files)
    models/  predictions/  submissions/   later stages
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planet.constants import MANIFEST  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class CompetitionDirs:
    root: Path  # <data_dir>/<slug>

    @classmethod
    def of(cls, data_dir: str | Path, slug: str) -> CompetitionDirs:
        return cls(Path(data_dir).expanduser().resolve() / slug)

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    def original_shards(self, split: str) -> Path:
        return self.root / "shards" / "original" / split

    def sized_shards(self, size: int, split: str) -> Path:
        return self.root / "shards" / str(size) / split

    def image_folder(self, split: str) -> Path:
        return self.root / "images" / split

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"
