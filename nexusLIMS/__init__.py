"""NexusLIMS back end: the session database and the instruments it records.

Importing this package (or any of its modules) does no I/O and needs no
environment variable; the database is opened only when a function is called.
"""

__version__ = "1.4.3.post1"

#: The name this package is installed by (``pip install nexuslims-db``); it
#: provides the import package ``nexusLIMS``, as NexusLIMS itself does.
DISTRIBUTION = "nexuslims-db"
