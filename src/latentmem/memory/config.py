"""Configuration of vector memory stores."""

from __future__ import annotations

import dataclasses
from typing import Literal

from latentmem.config import Config, require


@dataclasses.dataclass
class VectorMemoryConfig(Config):
    """How a vector memory stores, deduplicates and searches.

    Attributes:
        near_duplicate_threshold: a new text whose cosine similarity to an existing record *in the same
            scope* is at least this is a near duplicate: `add` returns the existing record. `None` (the
            default) keeps only exact duplicates (same text after case-folding and whitespace collapsing)
            out. Off by default because similarity does not see what changed: with MiniLM at 0.95,
            "Alice is not allergic to peanuts" after "Alice is allergic to peanuts", a new phone number
            and a moved meeting day each scored as duplicates and the new fact was dropped. Set it only
            for streams of rephrasings where losing an update is acceptable.
        max_chars: the longest text accepted; longer ones are an error (split them).
        max_metadata_chars: the longest metadata accepted, counted in characters of its JSON form; a
            record's metadata is read back with every hit, so it is capped like its text.
        index_kind: the `VectorIndex` backend of the embedded store. `auto` (the default) searches
            exactly (`exact`: one BLAS pass over the vectors, no slower than brute-force numpy) up to
            `auto_threshold` records and an IVF index above it, which scans about 16 cells of ~sqrt(N)
            vectors per query: with 100k 384-dim vectors 0.9 / 1.6 ms (min / median) instead of 8.6 /
            14.7 ms exact, at recall@10 1.0 on the bench's clustered vectors (README "Text memory").
            Approximate search trades recall on data without structure: on 100k i.i.d. random vectors
            IVF found 0.27 of the true top-10 (HNSW about 0.3, and it built ~20x slower). `exact` or
            `flat` (FAISS's exact scan) keep a large store exact; `hnsw` and `ivf` are approximate at
            every size.
        auto_threshold: the record count at which `index_kind="auto"` leaves exact search for IVF
            (the recall bank's default too): the exact scan grows with N, about half the 100k time here.
        exact_filter_limit: a search whose scope and filters match at most this many records scores
            exactly those records with numpy (pre-filtering; reading vectors from SQLite is slower per
            record than the index's scan, so this pays only for small scopes); larger ones search the
            index and drop the hits outside the scope (post-filtering, fetching more until k remain).
        snapshot_min_changes: the embedded store rewrites its index file once this many records (and at
            least a quarter of the index) changed since the last file; until then a process that opens
            the store replays the changes from SQLite, which stays the source of truth.
        lock_timeout_s: how long a writer waits for another process's write lock before giving up.
    """

    near_duplicate_threshold: float | None = None
    max_chars: int = 32_000
    max_metadata_chars: int = 16_000
    index_kind: Literal["auto", "exact", "flat", "hnsw", "ivf"] = "auto"
    auto_threshold: int = 50_000
    exact_filter_limit: int = 2000
    snapshot_min_changes: int = 1000
    lock_timeout_s: float = 30.0

    def validate(self) -> None:
        t = self.near_duplicate_threshold
        require(
            t is None or 0.0 < t <= 1.0,
            "near_duplicate_threshold",
            f"must be in (0, 1] (e.g. 0.95) or null to keep only exact duplicates out; got {t}",
        )
        require(self.max_chars > 0, "max_chars", f"must be positive, got {self.max_chars}")
        require(
            self.max_metadata_chars > 0,
            "max_metadata_chars",
            f"must be positive, got {self.max_metadata_chars}",
        )
        require(self.auto_threshold > 0, "auto_threshold", f"must be positive, got {self.auto_threshold}")
        require(
            self.exact_filter_limit >= 0,
            "exact_filter_limit",
            f"must be >= 0 (0 always post-filters), got {self.exact_filter_limit}",
        )
        require(
            self.snapshot_min_changes > 0,
            "snapshot_min_changes",
            f"must be positive (e.g. 1000), got {self.snapshot_min_changes}",
        )
        require(self.lock_timeout_s > 0, "lock_timeout_s", f"must be positive, got {self.lock_timeout_s}")
