"""Vendors the browser SDKs Clew serves (src/clew/edge/vendor/): the published npm builds of
@segment/analytics-next and @rudderstack/analytics-js, pinned, never edited.

Run by a developer with Node.js and npm, after changing a version below:

    python scripts/vendor_sdks.py

For each package it runs `npm pack NAME@VERSION --json` (npm downloads the tarball from the
registry npm is configured with), extracts the files Clew serves and the package's license
into ``src/clew/edge/vendor/<dir>/`` (paths kept as in the package), and rewrites
``src/clew/edge/vendor/manifest.json``: package, version, the integrity string npm reported
for the tarball, and the sha256 of every vendored file. A test checks the served files
against the manifest, so a hand edit fails the suite. The files are committed, so neither
`make run` nor a wheel needs Node.js.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "src" / "clew" / "edge" / "vendor"


@dataclass(frozen=True)
class Vendored:
    package: str
    version: str
    directory: str  # under VENDOR
    files: tuple[str, ...]  # glob patterns of package paths


PACKAGES = (
    # The snippet's analytics.min.js is the standalone build; it loads its chunks
    # (dist/umd/*.bundle.*.js) from the same base. The .gz twins are served to gzip clients.
    Vendored(
        "@segment/analytics-next",
        "1.84.3",
        "segment-analytics-next-1.84.3",
        ("LICENSE.MD", "dist/umd/standalone.js", "dist/umd/standalone.js.gz",
         "dist/umd/*.bundle.*.js", "dist/umd/*.bundle.*.js.gz"),
    ),
    # The bundled UMD build: its plugins inside, so it loads nothing else.
    Vendored(
        "@rudderstack/analytics-js",
        "3.34.1",
        "rudderstack-analytics-js-3.34.1",
        ("LICENSE.md", "dist/npm/modern/bundled/umd/index.js"),
    ),
)  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pack(spec: Vendored, work: Path) -> tuple[Path, str]:
    """The tarball npm downloaded for ``spec`` and its integrity string."""
    out = subprocess.run(
        [
            "npm",
            "pack",
            f"{spec.package}@{spec.version}",
            "--json",
            "--pack-destination",
            str(work),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=work,
    )
    (info,) = json.loads(out.stdout)
    return work / info["filename"], info["integrity"]


def extract(spec: Vendored, tarball: Path) -> dict[str, str]:
    """Extracts the files of ``spec`` into its vendor directory; their sha256 by path."""
    target = VENDOR / spec.directory
    shutil.rmtree(target, ignore_errors=True)
    hashes: dict[str, str] = {}
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("package/")
            if not member.isfile() or not any(fnmatch.fnmatch(name, p) for p in spec.files):
                continue
            source = tar.extractfile(member)
            assert source is not None
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(source.read())
            hashes[name] = sha256(dest)
    missing = [p for p in spec.files if not any(fnmatch.fnmatch(n, p) for n in hashes)]
    if missing:
        raise SystemExit(f"{spec.package}@{spec.version} has no file matching {missing}")
    return dict(sorted(hashes.items()))


def main() -> None:
    if shutil.which("npm") is None:
        raise SystemExit("npm is not on PATH: install Node.js (it brings npm), then run again")
    manifest = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in PACKAGES:
            tarball, integrity = pack(spec, Path(tmp))
            files = extract(spec, tarball)
            manifest.append(
                {
                    "package": spec.package,
                    "version": spec.version,
                    "integrity": integrity,
                    "directory": spec.directory,
                    "files": files,
                }
            )
            print(f"{spec.package}@{spec.version}: {len(files)} files", file=sys.stderr)
    (VENDOR / "manifest.json").write_text(json.dumps({"packages": manifest}, indent=2) + "\n")


if __name__ == "__main__":
    main()
