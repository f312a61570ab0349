"""Build a tree of links with the import layout of the namespace ``modelrunner``: its folders
map onto the package through setuptools' package-dir (pyproject.toml), which tools that walk a
package's folder (mypy, import-linter's grimp) cannot follow. Usage: namespace_tree.py DEST."""

import shutil
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def build(dest: Path) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "modelrunner").mkdir(parents=True)
    for package, folder in package_dir.items():
        if package == "modelrunner":  # the root package: its files, beside the subpackages
            for path in sorted((ROOT / folder).iterdir()):
                if path.suffix == ".py" or path.name == "py.typed":
                    (dest / "modelrunner" / path.name).symlink_to(path)
        else:
            (dest / package.replace(".", "/")).symlink_to(ROOT / folder)


if __name__ == "__main__":
    build(Path(sys.argv[1]).resolve())
