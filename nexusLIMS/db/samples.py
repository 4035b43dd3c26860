"""Sample instruments, for tests, demos and trying the package out."""

from __future__ import annotations

from typing import Optional

from nexusLIMS.db.connection import PathLike
from nexusLIMS.instruments import Instrument, add_instrument, load_instruments

__all__ = ["add_sample_instruments", "sample_instruments"]


def sample_instruments() -> list[Instrument]:
    """Return new :class:`Instrument` objects for three sample instruments.

    Two are in ``America/New_York`` and one in ``America/Denver``.
    """
    return [
        Instrument(
            name="FEI-Titan-TEM-635816",
            api_url="https://nemo.example.org/api/tools/?id=1",
            calendar_name="FEI Titan TEM",
            calendar_url="https://nemo.example.org/calendar/titan-tem/",
            location="Building 217, Room F131",
            schema_name="Titan TEM",
            property_tag="635816",
            filestore_path="./Titan",
            computer_name="TITAN-PC-01",
            computer_ip="192.0.2.11",
            computer_mount="M:/",
            harvester="nemo",
            timezone="America/New_York",
        ),
        Instrument(
            name="FEI-Quanta-ESEM-633137",
            api_url="https://nemo.example.org/api/tools/?id=2",
            calendar_name="FEI Quanta200 ESEM",
            calendar_url="https://nemo.example.org/calendar/quanta/",
            location="Building 217, Room E123",
            schema_name="Quanta FEG 200",
            property_tag="633137",
            filestore_path="./Quanta",
            computer_name="QUANTA-PC-01",
            computer_ip="192.0.2.12",
            computer_mount="M:/",
            harvester="nemo",
            timezone="America/New_York",
        ),
        Instrument(
            name="JEOL-JEM3010-TEM-565989",
            api_url="https://nemo.example.org/api/tools/?id=3",
            calendar_name="JEOL JEM-3010 TEM",
            calendar_url="https://nemo.example.org/calendar/jeol-3010/",
            location="Building 1, Room 1201",
            schema_name="JEOL JEM-3010",
            property_tag="565989",
            filestore_path="./JEOL3010",
            computer_name="JEOL3010-PC",
            computer_ip="192.0.2.13",
            computer_mount="J:/",
            harvester="nemo",
            timezone="America/Denver",
        ),
    ]


def add_sample_instruments(path: Optional[PathLike] = None) -> dict[str, Instrument]:
    """Add the :func:`sample_instruments` to the database and return its instruments.

    Parameters
    ----------
    path
        The database; by default from ``nexusLIMS_db_path``.
    """
    for instrument in sample_instruments():
        add_instrument(instrument, path)
    return load_instruments(path)
