"""Computed traits and audiences: definitions, the engine that keeps them live in the profiles
stage, timers for conditions that change with time alone, and backfill from the lake."""

from clew.audiences.definitions import (
    AudienceCatalog,
    AudienceDef,
    Definition,
    DefinitionError,
    TraitDef,
    parse_document,
)
from clew.audiences.engine import AUDIENCES, ComputedChange, Engine, Evaluation

__all__ = [
    "AUDIENCES",
    "AudienceCatalog",
    "AudienceDef",
    "ComputedChange",
    "Definition",
    "DefinitionError",
    "Engine",
    "Evaluation",
    "TraitDef",
    "parse_document",
]
