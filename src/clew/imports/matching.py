"""Probabilistic matching of imported customer records against existing profiles.

A CSV import brings rows that share no identifier with the profiles Clew already holds:
the same person may come back with a typo in the surname, another phone, or a date written
another way. :func:`match_records` scores candidate pairs with Splink (a Fellegi-Sunter
model, run on its DuckDB backend) and returns the pairs worth acting on: those a caller
may merge automatically and those a person should confirm.

Record convention (the CSV import header): every value is a string and an empty string
means missing. Imported records carry ``id``, existing profiles ``profile_id``; both may
carry any of :data:`FIELDS`.

The model, in short:

* Values are normalised first (:func:`normalise`), so formatting never counts as
  disagreement.
* Only pairs that agree exactly on one of :data:`BLOCKING_KEYS` are scored, and never a
  profile with another profile.
* With at least :data:`MIN_TRAINING_ROWS` rows, u probabilities are estimated from a
  seeded random sample of pairs and m probabilities by expectation maximisation over
  pairs sharing a date of birth, then a postcode. Smaller inputs use fixed priors
  (``_PRIORS``): conservative guesses for consumer data, e.g. a surname agrees by chance
  in one pair in 200 and a date of birth in one in 10,000. A level that training cannot
  observe keeps its prior, so a small or sparse import still scores deterministically.
* The prior probability that two rows are the same person is ``1 / max(rows, 10,000)``:
  each record is assumed to have about one true match among the rows it is compared
  with, and a small batch is not allowed to make weak evidence look strong.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from splink import Linker
    from splink.internals.comparison_creator import ComparisonCreator
    from splink.internals.splink_dataframe import SplinkDataFrame

FIELDS: tuple[str, ...] = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "address",
    "city",
    "postcode",
    "date_of_birth",
    "loyalty_id",
)

#: A pair is scored only if both rows have, and agree exactly on, all columns of a key.
BLOCKING_KEYS: tuple[tuple[str, ...], ...] = (
    ("email",),
    ("phone",),
    ("loyalty_id",),
    ("postcode",),
    ("date_of_birth",),
    ("first_name", "last_name"),
    ("city", "address"),
)

#: With fewer rows (records plus profiles) than this, the fixed priors are used as is.
MIN_TRAINING_ROWS = 500

# m/u priors per comparison for its non-null levels, most similar first, "else" last.
_PRIORS: dict[str, tuple[list[float], list[float]]] = {
    # exact, Jaro-Winkler >= 0.92, >= 0.88, >= 0.7, else
    "first_name": ([0.86, 0.06, 0.03, 0.04, 0.01], [0.01, 0.004, 0.006, 0.08, 0.9]),
    "last_name": ([0.85, 0.06, 0.03, 0.04, 0.02], [0.005, 0.002, 0.003, 0.05, 0.94]),
    # exact, same username, Jaro-Winkler >= 0.88, username Jaro-Winkler >= 0.88, else
    "email": ([0.85, 0.05, 0.05, 0.02, 0.03], [1e-5, 1e-4, 1e-4, 1e-3, 0.99879]),
    # exact, Levenshtein <= 1, within 1 month, 1 year, 10 years, else
    "date_of_birth": (
        [0.88, 0.07, 0.015, 0.02, 0.012, 0.003],
        [1e-4, 2e-3, 1e-3, 0.02, 0.25, 0.7269],
    ),
    # exact, Jaro-Winkler >= 0.9, >= 0.7, else
    "address": ([0.8, 0.1, 0.05, 0.05], [5e-4, 1e-3, 0.05, 0.9485]),
    # exact, else
    "phone": ([0.9, 0.1], [1e-5, 0.99999]),
    "postcode": ([0.9, 0.1], [2e-3, 0.998]),
    # Nearly implied by a postcode match, so its prior weight is kept modest.
    "city": ([0.85, 0.15], [0.05, 0.95]),
    "loyalty_id": ([0.95, 0.05], [1e-6, 0.999999]),
}
_TF_FIELDS = ("first_name", "last_name", "email")  # their exact levels use term frequencies
_MIN_POPULATION = 10_000
_EM_BLOCKING_KEYS: tuple[tuple[str, ...], ...] = (("date_of_birth",), ("postcode",))
_MIN_EM_PAIRS = 50
_U_SAMPLE_PAIRS = 2e6

_UID = "unique_id"
_SOURCE = "source_dataset"
_RECORDS = "records"
_PROFILES = "profiles"

Row = dict[str, str | None]


@dataclass(frozen=True, slots=True)
class MatchThresholds:
    """Match probabilities from which a pair is merged automatically, or listed for a
    person to confirm. ``0 < review <= merge <= 1``, else :class:`ValueError`."""

    merge: float = 0.99
    review: float = 0.80

    def __post_init__(self) -> None:
        if not 0.0 < self.review <= self.merge <= 1.0:
            raise ValueError(
                "match thresholds must satisfy 0 < review <= merge <= 1, got "
                f"review={self.review}, merge={self.merge}"
            )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A scored pair: an imported record and an existing profile or another record.

    ``match_weight`` is Splink's: the log2 posterior odds of a match (prior plus the
    log2 Bayes factor of every field); ``probability`` is the same on a 0-1 scale.
    """

    record_id: str
    other_id: str
    other_is_profile: bool
    match_weight: float
    probability: float
    decision: Literal["merge", "review"]


class MatchingUnavailableError(ImportError):
    def __init__(self) -> None:
        super().__init__(
            "probabilistic matching needs the splink package: pip install 'splink==5.0.0'"
        )


class InvalidRecordIdError(ValueError):
    """A row has no id, or two rows of the same input share one."""


def normalise(row: Mapping[str, str], id_key: str) -> Row:
    """The row's id (under ``unique_id``) and its :data:`FIELDS` in comparable form,
    ``None`` where missing.

    Names, address and city are casefolded with accents and repeated spaces removed;
    email trimmed and lowercased; phone reduced to digits; postcode uppercased without
    spaces; date of birth rewritten as ``YYYY-MM-DD`` from ``YYYYMMDD``, ``YYYY-MM-DD``
    or ``DD/MM/YYYY``. Other date formats count as missing; impossible dates (month 13)
    are kept, so a digit typo still scores as nearly equal.
    """
    out: Row = {_UID: (row.get(id_key) or "").strip() or None}
    for name in FIELDS:
        out[name] = _normalise_value(name, row.get(name) or "")
    return out


def _normalise_value(name: str, raw: str) -> str | None:
    value = raw.strip()
    if name in ("first_name", "last_name", "address", "city"):
        decomposed = unicodedata.normalize("NFKD", value.casefold())
        value = " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())
    elif name == "email":
        value = value.lower()
    elif name == "phone":
        value = re.sub(r"\D", "", value)
    elif name == "postcode":
        value = re.sub(r"\s", "", value).upper()
    elif name == "date_of_birth":
        value = _normalise_date(value)
    return value or None


def _normalise_date(value: str) -> str:
    if m := re.fullmatch(r"(\d{4})-?(\d{2})-?(\d{2})", value):
        return "-".join(m.groups())
    if m := re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", value):
        day, month, year = m.groups()
        return f"{year}-{int(month):02d}-{int(day):02d}"
    return ""


def match_records(
    records: Sequence[Mapping[str, str]],
    profiles: Sequence[Mapping[str, str]],
    thresholds: MatchThresholds = MatchThresholds(),
    *,
    seed: int = 0,
    train: bool | None = None,
) -> list[Candidate]:
    """Scores imported records against existing profiles and against each other; returns
    the pairs at or above the review threshold, best first per record.

    Records come in input order. Each record↔record pair is listed once, under the
    record that comes first. ``train`` forces (``True``) or prevents (``False``) fitting
    the model to this data; by default it is fitted from :data:`MIN_TRAINING_ROWS` rows
    on. The result depends only on the arguments.

    Raises :class:`InvalidRecordIdError` for a missing or repeated id within an input,
    and :class:`MatchingUnavailableError` when splink is not installed.
    """
    rows = _normalised_rows(records, "id")
    others = _normalised_rows(profiles, "profile_id")
    fields = [f for f in FIELDS if any(r[f] is not None for r in (*rows, *others))]
    if not rows or len(rows) + len(others) < 2 or not fields:
        return []
    should_train = len(rows) + len(others) >= MIN_TRAINING_ROWS if train is None else train

    splink = _import_splink()
    with _quiet_splink():
        db_api = splink.DuckDBAPI()
        try:
            tables = [db_api.register(_arrow(rows, _RECORDS), table_name=_RECORDS)]
            if others:
                tables.append(db_api.register(_arrow(others, _PROFILES), table_name=_PROFILES))
            linker = _linker(tables, fields, len(rows) + len(others), should_train, seed)
            pairs = _predict(linker, tables, thresholds.review)
        finally:
            db_api.duckdb_con.close()

    order = {row[_UID]: i for i, row in enumerate(rows)}
    candidates = []
    for source_l, id_l, source_r, id_r, weight, probability in pairs:
        left, right = (source_l, id_l), (source_r, id_r)
        if left[0] == _PROFILES or (right[0] == _RECORDS and order[id_r] < order[id_l]):
            left, right = right, left
        if left[0] == _PROFILES or probability < thresholds.review:
            continue
        candidates.append(
            Candidate(
                record_id=left[1],
                other_id=right[1],
                other_is_profile=right[0] == _PROFILES,
                match_weight=weight,
                probability=probability,
                decision="merge" if probability >= thresholds.merge else "review",
            )
        )
    candidates.sort(
        key=lambda c: (order[c.record_id], -c.match_weight, not c.other_is_profile, c.other_id)
    )
    return candidates


def _normalised_rows(rows: Sequence[Mapping[str, str]], id_key: str) -> list[Row]:
    out = [normalise(row, id_key) for row in rows]
    if any(row[_UID] is None for row in out):
        raise InvalidRecordIdError(f"every row needs a non-empty {id_key!r}")
    repeated = sorted(str(i) for i, n in Counter(row[_UID] for row in out).items() if n > 1)
    if repeated:
        raise InvalidRecordIdError(f"{id_key!r} must be unique; repeated: {repeated[:5]}")
    return out


def _arrow(rows: list[Row], source: str) -> Any:
    import pyarrow as pa

    columns = {name: pa.array([r[name] for r in rows], pa.string()) for name in (_UID, *FIELDS)}
    columns[_SOURCE] = pa.array([source] * len(rows), pa.string())
    return pa.table(columns)


def _linker(
    tables: list[SplinkDataFrame], fields: list[str], n_rows: int, train: bool, seed: int
) -> Linker:
    """A linker ready to predict: the fixed priors, or the model fitted to ``tables``
    (with term-frequency adjustments for names and email, and priors where training
    observed nothing)."""
    from splink import Linker, SettingsCreator, block_on

    model = SettingsCreator(
        link_type="link_and_dedupe" if len(tables) > 1 else "dedupe_only",
        comparisons=_comparisons(fields),
        blocking_rules_to_generate_predictions=[block_on(*key) for key in BLOCKING_KEYS],
        probability_two_random_records_match=1.0 / max(n_rows, _MIN_POPULATION),
        retain_matching_columns=False,
        unique_id_column_name=_UID,
        source_dataset_column_name=_SOURCE,
    ).create_settings_dict("duckdb")
    if train:
        trainer = Linker(tables, model, log_level=None)
        # Parallel aggregation adds floats in a varying order; one thread keeps the
        # trained parameters, and so every score, identical from run to run.
        con = tables[0].db_api.duckdb_con
        con.execute("SET threads = 1")
        try:
            trainer.training.estimate_u_using_random_sampling(max_pairs=_U_SAMPLE_PAIRS, seed=seed)
            for key in _EM_BLOCKING_KEYS:
                if _pairs_agreeing(tables, key) >= _MIN_EM_PAIRS:
                    trainer.training.estimate_parameters_using_expectation_maximisation(
                        block_on(*key), estimate_without_term_frequencies=True
                    )
        finally:
            con.execute("RESET threads")
        model = _fill_untrained(trainer.misc.save_model_to_json())
        linker = Linker(tables, model, log_level=None)
        for name in _TF_FIELDS:
            if name in fields:
                linker.table_management.compute_tf_table(name)
        return linker
    # Term frequencies taken from a batch too small to train on are noise: in a batch of
    # six rows, a surname shared by two would look as common as "Smith".
    for comparison in model["comparisons"]:
        for level in comparison["comparison_levels"]:
            level.pop("tf_adjustment_column", None)
            level.pop("tf_adjustment_weight", None)
    return Linker(tables, model, log_level=None)


def _comparisons(fields: list[str]) -> list[ComparisonCreator | dict[str, Any]]:
    import splink.comparison_library as cl

    made: dict[str, ComparisonCreator] = {
        "first_name": cl.NameComparison("first_name"),
        "last_name": cl.NameComparison("last_name"),
        "email": cl.EmailComparison("email"),
        "date_of_birth": cl.DateOfBirthComparison(
            "date_of_birth",
            input_is_string=True,
            datetime_format="%Y-%m-%d",
            invalid_dates_as_null=False,
        ),
        "address": cl.JaroWinklerAtThresholds("address", [0.9, 0.7]),
        "phone": cl.ExactMatch("phone"),
        "postcode": cl.ExactMatch("postcode"),
        "city": cl.ExactMatch("city"),
        "loyalty_id": cl.ExactMatch("loyalty_id"),
    }
    for name, comparison in made.items():
        m, u = _PRIORS[name]
        comparison.configure(m_probabilities=m, u_probabilities=u)
    return [made[name] for name in fields]


def _pairs_agreeing(tables: list[SplinkDataFrame], key: tuple[str, ...]) -> int:
    """How many pairs of rows, across all tables, agree on every column of ``key``."""
    union = " union all ".join(f"select {', '.join(key)} from {t.physical_name}" for t in tables)
    present = " and ".join(f"{c} is not null" for c in key)
    sql = (
        f"select coalesce(sum(n * (n - 1) // 2), 0) from "
        f"(select count(*) as n from ({union}) where {present} group by all)"
    )
    ((count,),) = tables[0].db_api.duckdb_con.execute(sql).fetchall()
    return int(count)


def _fill_untrained(model: dict[str, Any]) -> dict[str, Any]:
    """``model`` with every m/u that training left unset or unobserved set to its prior,
    so prediction never falls back on Splink's generic defaults."""
    for comparison in model["comparisons"]:
        m_prior, u_prior = _PRIORS[comparison["output_column_name"]]
        levels = [lv for lv in comparison["comparison_levels"] if not lv.get("is_null_level")]
        for level, m, u in zip(levels, m_prior, u_prior, strict=True):
            for key, prior in (("m_probability", m), ("u_probability", u)):
                value = level.get(key)
                if not isinstance(value, float | int) or not 0.0 < value <= 1.0:
                    level[key] = prior
    return model


def _predict(
    linker: Linker, tables: list[SplinkDataFrame], review: float
) -> list[tuple[str, str, str, str, float, float]]:
    """Scored pairs at (or a hair under) ``review`` as ``(source_l, id_l, source_r,
    id_r, match_weight, match_probability)``; no profile↔profile pair is scored."""
    cut = review * (1 - 1e-9)
    inference = linker.inference
    if len(tables) == 1:
        frames = [inference.predict(threshold_match_probability=cut, warning_mode="never")]
    else:
        records, profiles = tables
        frames = [
            inference.predict_between(
                records, profiles, threshold_match_probability=cut, warning_mode="never"
            ),
            inference.predict_within(
                records,
                link_type="dedupe_only",
                threshold_match_probability=cut,
                warning_mode="never",
            ),
        ]
    # A dedupe-only prediction has no source columns: every row is an imported record.
    sources = (_SOURCE + "_l", _SOURCE + "_r") if len(tables) > 1 else (f"'{_RECORDS}'",) * 2
    pairs = []
    for frame in frames:
        sql = (
            f"select {sources[0]}, unique_id_l, {sources[1]}, unique_id_r, "
            f"match_weight, match_probability from {frame.physical_name}"
        )
        pairs.extend(frame.db_api.duckdb_con.execute(sql).fetchall())
    return pairs


def _import_splink() -> Any:
    try:
        import splink
        import splink.comparison_library
    except ImportError as exc:
        raise MatchingUnavailableError() from exc
    return splink


@contextmanager
def _quiet_splink() -> Iterator[None]:
    """Holds Splink's loggers at WARNING or above for the duration (its INFO output is
    training progress), and its EM logger at ERROR: that one only warns of levels not
    observed in training, which keep their priors here."""
    levels = {"splink": logging.WARNING, "splink.internals.expectation_maximisation": logging.ERROR}
    previous = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < level:
            logger.setLevel(level)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)
