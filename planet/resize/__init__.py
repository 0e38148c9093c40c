"""Pre-resize: decode every original JPEG once into square uint8 pixel shards (fast.ai's
`data.resize(...)`, done on any Dask cluster and read back at memory speed).

    shards/original/<split>/part-NNNNN.parquet  ->  shards/<size>/<split>/part-NNNNN.parquet

- `planet.resize.image`: one image, decoded with DCT scaling and resized (`resize_jpeg`);
- `planet.resize.shard`: one shard, its schema and labels (`resize_shard`);
- `planet.resize.split`: a split, in this process or on Dask, and its manifest
  (`resize_split`, `sized_complete`);
- `planet.resize.cluster`: the Dask client (`dask_client`, `dashboard_link`).

The sized shards are read back by `planet.store.sized` (its docstring describes the format).
Measurements: bench/README.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from planet.resize.cluster import THREAD_ENV, dashboard_link, dask_client
from planet.resize.image import BadImageError, resize_jpeg
from planet.resize.shard import labels_digest, resize_shard
from planet.resize.split import resize_split, sized_complete
from planet.store.sized import FORMAT, FORMAT_VERSION

__all__: Sequence[str] = (
    "FORMAT",
    "FORMAT_VERSION",
    "THREAD_ENV",
    "BadImageError",
    "dashboard_link",
    "dask_client",
    "labels_digest",
    "resize_jpeg",
    "resize_shard",
    "resize_split",
    "sized_complete",
)
