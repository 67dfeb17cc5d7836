"""Identity settings from a TOML file, as docs/profiles.md shows them."""

from __future__ import annotations

from pathlib import Path

from clew.config import load_settings

EXAMPLE = """
[identity]
history = 50

[identity.rules]
phone_region = "GB"
max_merges_per_profile = 50

[identity.rules.id_types.email]
priority = 2
limit = 3
window_s = 604800
blocked = ["[^@]*@mycompany-test\\\\.com"]

[[identity.rules.custom_ids]]
id_type = "membership_no"
paths = ["traits.membership_no", "context.membership.number"]

[identity.traits.fields]
favourite_colours = "union"
referral_credits = "sum"
signup_channel = "first"
"""


def test_documented_example_loads_and_keeps_other_defaults(tmp_path: Path) -> None:
    config = tmp_path / "clew.toml"
    config.write_text(EXAMPLE)
    settings = load_settings(config)
    ident = settings.identity
    assert ident.history == 50
    rules = ident.rules
    assert rules.id_types["email"].limit == 3
    assert rules.id_types["user_id"].limit == 1, "configuring email keeps user_id's default"
    assert rules.is_blocked("email", "qa@mycompany-test.com")
    assert rules.is_blocked("email", "null@example.com"), "default placeholders stay blocked"
    assert [c.id_type for c in rules.custom_ids] == ["membership_no"]
    assert ident.traits.strategy("referral_credits") == "sum"
    assert ident.traits.strategy("name") == "latest"
    docs = (Path(__file__).parents[2] / "docs" / "profiles.md").read_text()
    assert EXAMPLE.strip() in docs, "docs/profiles.md shows this example"


def test_a_summed_trait_that_outgrows_64_bit_integers_becomes_a_float() -> None:
    # Each value is in range (validation refuses the others); their total must still be
    # writable as JSON by the stages after the profiles stage.
    from clew.identity.traits import TraitMerger, TraitPolicy
    from clew.nesting import encode

    merger = TraitMerger(TraitPolicy(fields={"credits": "sum"}))
    big = 2**64 - 1
    traits = merger.values({"credits": big}, {"credits": big}, [])
    assert traits["credits"] == float(2 * big)
    assert encode(traits)
    assert merger.merge_traits({"credits": 2}, {"credits": 3}, {}, {})["credits"] == 5
