"""The lake's locations, local or on object storage: defined in the core module
:mod:`clew._locations` (so the settings can name them without importing the lake), and
re-exported here for the lake's modules."""

from clew._locations import (
    OBJECT_SCHEMES,
    LakeLocation,
    ObjectStorageUnsupported,
    S3Settings,
    TableLocation,
    as_location,
    check_uri,
    s3_settings,
)

__all__ = [
    "OBJECT_SCHEMES",
    "LakeLocation",
    "ObjectStorageUnsupported",
    "S3Settings",
    "TableLocation",
    "as_location",
    "check_uri",
    "s3_settings",
]
