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
PACKAGE_DIRS = (
    PROTO_ROOT / "modelrunner" / "v1",
    # the Open Inference Protocol (package ``inference``), served by the control service
    PROTO_ROOT / "modelrunner" / "open_inference",
)
"""The folders whose protos become Python code. The protos under ``arrow/`` and ``grpc/`` are
for clients in other languages: pyarrow and grpcio bring their own code for them."""
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in d.glob("*.proto"))


def _generated_in(root: Path) -> dict[str, Path]:
    """Generated files under ``root`` (a package folder's parent tree), by their path below it."""
    found = {}
    for d in PACKAGE_DIRS:
        folder = root / d.relative_to(PROTO_ROOT)
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.endswith(GENERATED_SUFFIXES):
                    found[str(p.relative_to(root))] = p
    return found


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
    return sorted(_generated_in(out_dir).values())


def stale_files() -> list[str]:
    """Names of generated files that differ from what the protos produce now."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = _generated_in(Path(tmp))
        checked_in = _generated_in(PROTO_ROOT)
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
        for p in _generated_in(PROTO_ROOT).values():
            p.unlink()
        generate(Path(tmp))
        for name, p in _generated_in(Path(tmp)).items():
            shutil.copy2(p, PROTO_ROOT / name)
    print(f"generated code for {len(proto_files())} protos under {PROTO_ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
