"""Runs `buf lint` (and optionally `buf breaking`) over protos/ without any remote registry.

protoc (from grpcio-tools) builds a descriptor image with the google/api and
well-known imports found on disk; the `buf` binary of the virtual environment
(PyPI package buf-bin) lints that image against buf.yaml. With --against-ref,
the same image is built from the protos of a git ref and `buf breaking`
compares the two.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
BUILD = ROOT / ".build"
CONFIG = ROOT / "buf.yaml"


def googleapis_include() -> pathlib.Path:
    """The folder holding google/api/*.proto from googleapis-common-protos."""
    import google.api

    return pathlib.Path(google.api.__path__[0]).parent.parent


def buf_binary() -> str:
    """The buf executable installed beside this interpreter (buf-bin), else one on PATH."""
    beside = pathlib.Path(sys.executable).parent / "buf"
    if beside.exists():
        return str(beside)
    found = shutil.which("buf")
    if found is None:
        raise SystemExit("buf not found: run `make install` (buf-bin is in requirements.lock)")
    return found


def build_image(protos: pathlib.Path, out: pathlib.Path) -> None:
    """Compiles every protos/keel/**/*.proto into one descriptor image with source info."""
    sources = sorted(str(p.relative_to(protos)) for p in (protos / "keel").rglob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {protos / 'keel'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{protos}",
        f"-I{googleapis_include()}",
        f"-I{well_known}",
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed to compile {protos}")


def protos_at_ref(ref: str, into: pathlib.Path) -> bool:
    """Writes the protos/ tree of a git ref into a folder; False when that ref has none."""
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", ref, "--", "protos/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    files = [name for name in listing.stdout.splitlines() if name.endswith(".proto")]
    if listing.returncode != 0 or not any(name.startswith("protos/keel/") for name in files):
        return False
    for name in files:
        content = subprocess.run(["git", "show", f"{ref}:{name}"], cwd=ROOT, capture_output=True, check=True)
        target = into / pathlib.Path(name).relative_to("protos")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.stdout)
    return True


def lint(buf: str, image: pathlib.Path) -> int:
    """`buf lint` of the image, restricted to our own packages."""
    return subprocess.run(
        [buf, "lint", str(image), "--path", "keel", "--config", str(CONFIG)], cwd=ROOT, check=False
    ).returncode


def breaking(buf: str, image: pathlib.Path, ref: str) -> int:
    """`buf breaking` of the image against the protos of a git ref; 0 when the ref has no protos."""
    with tempfile.TemporaryDirectory(prefix="keel-buf-") as tmp:
        old_protos = pathlib.Path(tmp) / "protos"
        if not protos_at_ref(ref, old_protos):
            print(f"buf breaking: skipped, {ref} has no protos/keel to compare against")
            return 0
        old_image = pathlib.Path(tmp) / "old.binpb"
        build_image(old_protos, old_image)
        command = [buf, "breaking", str(image), "--against", str(old_image)]
        return subprocess.run(
            [*command, "--path", "keel", "--config", str(CONFIG)], cwd=ROOT, check=False
        ).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--against-ref", help="also run buf breaking against this git ref (e.g. origin/main)")
    args = parser.parse_args(argv)
    buf = buf_binary()
    image = BUILD / "image.binpb"
    build_image(PROTOS, image)
    status = lint(buf, image)
    print("buf lint: ok" if status == 0 else "buf lint: FAILED")
    if args.against_ref:
        verdict = breaking(buf, image, args.against_ref)
        print(f"buf breaking against {args.against_ref}: {'ok' if verdict == 0 else 'FAILED'}")
        status = status or verdict
    return status


if __name__ == "__main__":
    sys.exit(main())
