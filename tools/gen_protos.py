"""Regenerates the `keel` package (messages, gRPC stubs, type stubs) from protos/.

The output is committed and never edited by hand; CI reruns this and fails on a diff.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "keel"
# The mypy-protobuf plugins live beside the interpreter of the virtual environment.
BIN = pathlib.Path(sys.executable).parent
HEADER = '"""Generated from protos/ by `make protos`. Do not edit."""\n'


def googleapis_include() -> pathlib.Path:
    """The folder holding google/api/*.proto from googleapis-common-protos."""
    import google.api

    return pathlib.Path(google.api.__path__[0]).parent.parent


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTOS}",
        f"-I{googleapis_include()}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        f"--mypy_out={ROOT}",
        f"--mypy_grpc_out={ROOT}",
        # With source info: the gateway's OpenAPI document takes its text from the proto comments.
        "--include_source_info",
        f"--descriptor_set_out={OUT / 'descriptors.binpb'}",
        *sources,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    for folder in [OUT, *(p for p in OUT.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").write_text(HEADER)
    (OUT / "py.typed").write_text("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
