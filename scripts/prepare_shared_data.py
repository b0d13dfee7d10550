"""Extract the shared/ archives into the per-user cache once (idempotent, safe to interrupt).

    python scripts/prepare_shared_data.py            # every archive in shared/data
    C2IR_SHARED_DIR=/path/to/shared python scripts/prepare_shared_data.py

Experiments also extract on first use; this only does it ahead of time.
"""

from __future__ import annotations

import logging

from c2ir.data.shared import ensure_extracted, shared_dir


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = shared_dir()
    if base is None:
        raise SystemExit("shared/ not found: set C2IR_SHARED_DIR")
    for archive in sorted((base / "data").glob("*.tar.gz")):
        logging.info("%s -> %s", archive.name, ensure_extracted(archive.name))


if __name__ == "__main__":
    main()
