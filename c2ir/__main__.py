"""`python -m c2ir` (and `torchrun -m c2ir`) enter the same CLI as the console script."""

from c2ir.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
