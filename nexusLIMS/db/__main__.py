"""Run the ``nexuslims-db`` command line as ``python -m nexusLIMS.db``."""

from __future__ import annotations

if __name__ == "__main__":
    import sys

    from nexusLIMS.db.cli import main

    sys.exit(main())
