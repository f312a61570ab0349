"""Generate the Python code for the protos in this folder: the one way to make it.

Usage (from the repository root, with the ``dev`` extra installed)::

    python protos/generate.py           # regenerate in place
    python protos/generate.py --check   # exit 1 when the checked-in code is stale
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "modelrunner" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PACKAGE_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every proto into ``out_dir``; returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(
        p for p in (out_dir / "modelrunner" / "v1").iterdir() if p.name.endswith(GENERATED_SUFFIXES)
    )


def stale_files() -> list[str]:
    """Names of generated files that differ from what the protos produce now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp))}
        checked_in = {
            p.name: p for p in PACKAGE_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)
        }
        names = sorted(set(fresh) | set(checked_in))
        return [
            n
            for n in names
            if n not in fresh
            or n not in checked_in
            or not filecmp.cmp(fresh[n], checked_in[n], shallow=False)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the code is fresh")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated files (run python protos/generate.py):", ", ".join(stale))
            return 1
        print("generated protobuf code is fresh")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for p in PACKAGE_DIR.iterdir():
            if p.name.endswith(GENERATED_SUFFIXES):
                p.unlink()
        for p in generate(Path(tmp)):
            shutil.copy2(p, PACKAGE_DIR / p.name)
    print(f"generated code for {len(proto_files())} protos in {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
