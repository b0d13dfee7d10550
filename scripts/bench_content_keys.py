"""Cost of keying folder data and shared-archive extractions by content (issue 24), side by side.

    python scripts/bench_content_keys.py [--repeats 3] [--work DIR]

Extracts `shared/data/cifar10-jpeg.tar.gz` into a private folder, then times, on its 10,000-image test
split (`cifar10/test`) and on the whole extraction (60,000 files):

- listing key (before issue 24): relative path, size and mtime of every image (one stat per file);
- content key, cold: every image read and hashed (no digest table), with the files' pages dropped from the
  page cache first (posix_fadvise DONTNEED), i.e. read from disk;
- content key, cold table / warm page cache: every image hashed, the bytes already in memory;
- content key, warm: a new process with the digest table on disk (one stat per file, nothing read);
- extraction check (every first use in a process): in the first process after the extraction (the digests
  were remembered while extracting), cold without a digest table, warm; and the archive's own SHA-256.

Each figure is the median of `--repeats` runs; every cold run starts without a table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def evict(files: list[Path]) -> None:
    """Drop the files' cached pages, so the next read comes from disk (clean pages only; no root needed)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def listing_key(root: Path) -> str:
    """The fingerprint c2ir used before issue 24 (kept here as the baseline)."""
    from c2ir.data.folders import list_images

    digest = hashlib.blake2b(digest_size=16)
    for p in list_images(root):
        st = p.stat()
        digest.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def timed(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary folder)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="c2ir-bench-keys-"))
    os.environ["C2IR_SHARED_CACHE"] = str(work / "extracted")

    from c2ir.data import digests, shared
    from c2ir.data.folders import folder_fingerprint, list_images

    t0 = time.perf_counter()
    dest = shared.ensure_extracted("cifar10-jpeg.tar.gz")  # extraction + the SHA-256 of every member
    extract_s = time.perf_counter() - t0
    sha = shared.archive_digest("cifar10-jpeg.tar.gz")
    shared._VERIFIED.clear()
    digests._MEMO.clear()
    t0 = time.perf_counter()  # the next process: digests remembered at extraction, nothing read
    assert shared.extraction_problem(dest, sha) is None
    first_check_s = time.perf_counter() - t0
    time.sleep(2.5)  # digests of files changed < 2 s before hashing are not trusted (digests.RACY_NS)
    test = dest / "cifar10" / "test"
    images = list_images(test)
    every = [dest / r for r in shared._extracted_files(dest)]
    table = work / "digest-table"

    def fresh_table() -> None:
        shutil.rmtree(table, ignore_errors=True)
        digests._MEMO.clear()

    def cold() -> None:
        fresh_table()
        evict(images)

    content = lambda: folder_fingerprint(test, digests.DigestCache(table))  # noqa: E731
    rows = [("listing key (path, size, mtime), before", timed(lambda: listing_key(test), args.repeats))]
    rows.append(("content key, cold (read from disk, no table)", timed(content, args.repeats, cold)))
    rows.append(("content key, cold table, pages in memory", timed(content, args.repeats, fresh_table)))
    content()  # the table for the warm runs
    rows.append(("content key, warm (table on disk, new process)",
                 timed(content, args.repeats, digests._MEMO.clear)))

    def check() -> None:
        assert shared.extraction_problem(dest, sha) is None

    def forget_checks() -> None:
        shared._VERIFIED.clear()
        digests._MEMO.clear()

    def cold_check() -> None:
        forget_checks()
        shutil.rmtree(shared.extraction_root() / ".digests", ignore_errors=True)
        evict(every)

    rows.append(("extraction check, first process after the extraction (once)", first_check_s))
    rows.append((f"extraction check, cold, no digest table ({len(every):,} files read from disk)",
                 timed(check, args.repeats, cold_check)))
    check()
    rows.append(("extraction check, warm (new process)", timed(check, args.repeats, forget_checks)))
    src = shared._archive_path("cifar10-jpeg.tar.gz")

    def cold_archive() -> None:
        shutil.rmtree(shared.extraction_root() / ".digests", ignore_errors=True)
        digests._MEMO.clear()
        evict([src])

    rows.append(("archive SHA-256, cold (19 MB)", timed(lambda: shared.archive_digest("cifar10-jpeg.tar.gz"),
                                                        args.repeats, cold_archive)))
    shared.archive_digest("cifar10-jpeg.tar.gz")
    rows.append(("archive SHA-256, warm (new process)", timed(lambda: shared.archive_digest("cifar10-jpeg.tar.gz"),
                                                              args.repeats, digests._MEMO.clear)))
    base = rows[0][1]
    print(f"CIFAR-10 JPEG test split: {len(images):,} images ({sum(p.stat().st_size for p in images) / 1e6:.1f} MB); "
          f"extraction (once, {len(every):,} files incl. hashing them): {extract_s:.2f} s; median of {args.repeats}")
    print("| what | seconds | x listing key |")
    print("|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.3f} | {sec / base:.1f} |")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
