"""Allow ``python -m taa``."""

from taa.cli.main import main

if __name__ == "__main__":
    main()
