"""Where things live in a cache directory. The control service writes it; a runtime on the same
host reads packages from it directly, so both must agree on this layout::

    <cache_dir>/
        models/<model id>/      an unpacked package: bioimageio.yaml (or rdf.yaml) and its files
        index.sqlite            the registry's index (rebuilt from models/ when missing)
        tmp/                    staging: packages are unpacked here, then renamed into models/
        uploads/<upload id>     packages uploaded by clients, until added or expired
        zips/<model id>.zip     packages zipped for runtimes on other hosts
"""

from __future__ import annotations

from pathlib import Path

RDF_NAMES = ("bioimageio.yaml", "rdf.yaml")


def models_dir(cache_dir: Path) -> Path:
    return cache_dir / "models"


def model_dir(cache_dir: Path, model_id: str) -> Path:
    return models_dir(cache_dir) / model_id


def staging_dir(cache_dir: Path) -> Path:
    return cache_dir / "tmp"


def uploads_dir(cache_dir: Path) -> Path:
    return cache_dir / "uploads"


def zips_dir(cache_dir: Path) -> Path:
    return cache_dir / "zips"


def index_path(cache_dir: Path) -> Path:
    return cache_dir / "index.sqlite"


def find_rdf(package_dir: Path) -> Path | None:
    """The description file of an unpacked package, or None."""
    for name in RDF_NAMES:
        candidate = package_dir / name
        if candidate.is_file():
            return candidate
    return None
