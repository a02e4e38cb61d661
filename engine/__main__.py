"""``python -m polycorn``: the package's entry-point shim onto the CLI layer."""

from polycorn.cli.main import main

if __name__ == "__main__":
    main()
