"""Generate the Python gRPC code of ``proto/`` into ``proto/python`` (the ``tokentrim-proto`` distribution).

``python proto/generate.py`` rewrites the generated files; ``--check`` regenerates into a temporary folder
and exits 1, naming the stale files, when the committed ones differ. CI runs the check through the test
suite, so the committed code can never drift from the ``.proto`` files. The output depends on the
grpcio-tools version, which is pinned in the ``dev`` extra.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
OUTPUT_ROOT = PROTO_ROOT / "python"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "tokentrim").rglob("*.proto"))


def generate(output: Path) -> None:
    include = str(files("grpc_tools") / "_proto")  # google/protobuf/*.proto shipped with grpcio-tools
    for proto in proto_files():
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={output}",
            f"--pyi_out={output}",
            f"--grpc_python_out={output}",
            str(proto.relative_to(PROTO_ROOT)),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def generated_files(root: Path) -> set[Path]:
    return {
        path.relative_to(root) for path in root.rglob("*") if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def stale_files() -> list[str]:
    """Generated files that differ from, are missing from, or have no counterpart in a fresh generation."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh_root = Path(scratch)
        generate(fresh_root)
        fresh, committed = generated_files(fresh_root), generated_files(OUTPUT_ROOT)
        differing = {
            path for path in fresh & committed if not filecmp.cmp(fresh_root / path, OUTPUT_ROOT / path, shallow=False)
        }
        return sorted(str(path) for path in (fresh ^ committed) | differing)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed generated code is stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated code, run `make proto`: {', '.join(stale)}", file=sys.stderr)
            return 1
        print("generated code is up to date")
        return 0
    generate(OUTPUT_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
