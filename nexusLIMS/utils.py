"""Small helpers shared across NexusLIMS (those the database layer needs)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import PurePath
from typing import Iterable, Union

__all__ = ["current_system_tz", "is_subpath"]


def current_system_tz() -> timezone:
    """Return the system's local time zone at this moment.

    Returns
    -------
    datetime.timezone
        A fixed-offset zone for the local offset now (daylight saving time
        included), as the operating system reports it.
    """
    tzinfo = datetime.now().astimezone().tzinfo
    assert isinstance(tzinfo, timezone)  # astimezone() always gives one
    return tzinfo


def is_subpath(
    path: Union[str, PurePath], of_paths: Union[str, PurePath, Iterable[Union[str, PurePath]]]
) -> bool:
    """Return whether ``path`` lies inside (not at) any of ``of_paths``.

    The comparison is of the paths as written, as in NexusLIMS 1.4: nothing
    is resolved on disk, and ``.`` parts are ignored.

    Parameters
    ----------
    path
        The path to test.
    of_paths
        One folder, or several.
    """
    folders = [of_paths] if isinstance(of_paths, (str, PurePath)) else list(of_paths)
    parents = PurePath(path).parents
    return any(PurePath(folder) in parents for folder in folders)
