"""Shared test configuration.

The fixtures ``nexuslims_db`` and ``nexuslims_instruments`` come from the
package's own pytest plugin (``nexusLIMS.db.pytest_plugin``), registered by
the ``pytest11`` entry point when the package is installed.
"""
