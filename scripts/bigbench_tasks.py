"""Extract BIG-bench tasks' `task.json` from the `bigbench` 1.0.0 sdist on PyPI, for `--task bigbench`.

python scripts/bigbench_tasks.py navigate object_counting sports_understanding --out data/bigbench

The sdist (358 MB) is downloaded once into `$LATENTMEM_CACHE` (default `~/.cache/latentmem`) and checked
against PyPI's SHA-256; each task lands at `<out>/<task>/task.json`, which the configs in
`configs/smollm2/four_tasks/` read. `pip download bigbench` does not work (its metadata needs packages that
no longer install), hence the direct download. BIG-bench's arithmetic, modified_arithmetic,
unit_conversion and qa_wikidata tasks are reserved for independent evaluation of this project and are
refused.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from latentmem.models import cache_dir

SDIST = (
    "https://files.pythonhosted.org/packages/95/f8/c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cfc721c157/"
    "bigbench-1.0.0.tar.gz"
)
SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
RESERVED = {"arithmetic", "modified_arithmetic", "unit_conversion", "qa_wikidata"}
PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def sdist() -> Path:
    """The checked sdist in the cache, downloaded first when missing."""
    path = cache_dir() / "bigbench-1.0.0.tar.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        with urllib.request.urlopen(SDIST) as response, partial.open("wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            with tqdm(total=total, unit="B", unit_scale=True, desc="bigbench sdist") as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        partial.rename(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != SHA256:
        path.unlink()
        raise SystemExit(f"{path}: SHA-256 differs from PyPI's; removed it, run again to download anew")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tasks", nargs="+", help="BIG-bench task names, e.g. navigate object_counting")
    p.add_argument(
        "--out", default="data/bigbench", help="folder of <task>/task.json (default data/bigbench)"
    )
    args = p.parse_args(argv)
    reserved = sorted(RESERVED & set(args.tasks))
    if reserved:
        print(f"reserved for independent evaluation, refused: {', '.join(reserved)}", file=sys.stderr)
        return 2
    wanted = {f"{PREFIX}{t}/task.json": t for t in args.tasks}
    out = Path(args.out)
    with tarfile.open(sdist(), "r:gz") as tar:
        for member in tar:
            task = wanted.pop(member.name, None)
            if task is None:
                continue
            (out / task).mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, (out / task / "task.json").open("wb") as dst:
                shutil.copyfileobj(src, dst)
            print(out / task / "task.json")
            if not wanted:
                break
    if wanted:
        print(f"not in BIG-bench 1.0.0: {', '.join(sorted(wanted.values()))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
