"""Fails when the committed `keel/` package is not what protos/ generates.

Regenerates into a temporary copy (tools/gen_protos.py + protos/), so the
working tree is never touched, then compares the two trees file by file.
"""

from __future__ import annotations

import filecmp
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
GENERATED = ROOT / "keel"
STALE = "generated code is stale: run make protos"


def tree(folder: pathlib.Path) -> set[str]:
    """Relative paths of the files under a folder, ignoring caches."""
    if not folder.is_dir():
        return set()
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def regenerate(into: pathlib.Path) -> pathlib.Path:
    """Runs gen_protos.py in a scratch copy of the repo and returns its keel/ folder."""
    (into / "tools").mkdir()
    shutil.copy2(ROOT / "tools" / "gen_protos.py", into / "tools" / "gen_protos.py")
    shutil.copytree(ROOT / "protos", into / "protos")
    result = subprocess.run(
        [sys.executable, str(into / "tools" / "gen_protos.py")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"tools/gen_protos.py failed:\n{result.stdout}{result.stderr}")
    return into / "keel"


def differences(expected: pathlib.Path, actual: pathlib.Path) -> list[str]:
    """Human-readable lines: files missing, extra, or different in the committed tree."""
    want, have = tree(expected), tree(actual)
    lines = [f"  missing: keel/{name}" for name in sorted(want - have)]
    lines += [f"  not generated (delete it): keel/{name}" for name in sorted(have - want)]
    lines += [
        f"  differs: keel/{name}"
        for name in sorted(want & have)
        if not filecmp.cmp(expected / name, actual / name, shallow=False)
    ]
    return lines


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="keel-gen-") as tmp:
        fresh = regenerate(pathlib.Path(tmp))
        problems = differences(fresh, GENERATED)
    if problems:
        print(STALE, file=sys.stderr)
        print("\n".join(problems), file=sys.stderr)
        return 1
    print("generated code: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
