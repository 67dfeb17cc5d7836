"""The worked multi-machine configuration in the README loads as written: every key it uses
exists and has the type the settings expect (a renamed setting fails here, not for a user)."""

from __future__ import annotations

import re
from pathlib import Path

from clew.config import load_settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_worked_configuration_loads(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    [worked] = [b for b in blocks if 'backend = "kafka"' in b]
    config = tmp_path / "clew.toml"
    config.write_text(worked)
    settings = load_settings(config)
    assert settings.log.backend == "kafka"
    assert settings.log.bootstrap_servers.count(",") == 2
    assert settings.store.backend == "redis"
    assert settings.lake_location.uri.startswith("s3://")
    assert settings.cold_location.uri.startswith("s3://")
    assert settings.privacy.salt and settings.privacy.master_key
