"""``python -m clew.cli``: the `clew` command (how `clew serve` starts its workers)."""

from clew.cli import main

main()
