"""``python -m nashmoe``: the same as the ``nashmoe`` command."""

from nashmoe.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
