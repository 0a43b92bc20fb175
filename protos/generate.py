"""Generate del_client/proto from protos/ with grpcio-tools.

The proto package is `del.v1`, but `del` is a Python keyword: the modules protoc writes for
`del/v1/*.proto` would import each other as `from del.v1 import ...`, which cannot parse. So
the generated modules are flattened into `del_client/proto/` and their sibling imports made
relative to the package. The descriptors keep their proto file names (`del/v1/...`), which is what gRPC
reflection and other-language clients see.

Usage: `python protos/generate.py [--out DIR]` (default: del_client/proto; the staleness
test writes into a temporary DIR and compares).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
OUT = ROOT.parent / "del_client" / "proto"
SIBLING_IMPORT = re.compile(r"^from del\.v1 import (\w+)", re.MULTILINE)
# protoc's own escape for a keyword package: importlib.import_module('del.v1.frames_pb2').
SIBLING_IMPORTLIB = re.compile(r"importlib\.import_module\('del\.v1\.(\w+)'\)")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every protos/del/v1/*.proto and write flattened modules to out_dir."""
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "del" / "v1").glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{ROOT}", f"-I{Path(protoc.__file__).parent / '_proto'}"]
        args += [f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"]
        if protoc.main(args + sources) != 0:
            raise SystemExit("protoc failed")
        written = []
        out_dir.mkdir(parents=True, exist_ok=True)
        for module in sorted((Path(tmp) / "del" / "v1").iterdir()):
            text = SIBLING_IMPORT.sub(r"from . import \1", module.read_text())
            text = SIBLING_IMPORTLIB.sub(r"importlib.import_module(__package__ + '.\1')", text)
            if module.name.endswith("_grpc.py") and "Stub" not in text:
                continue  # a proto without a service: protoc still writes an empty module
            target = out_dir / module.name
            target.write_text(text)
            written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output directory")
    out = parser.parse_args().out
    if out == OUT:
        for stale in OUT.glob("*_pb2*.py*"):
            stale.unlink()
    for path in generate(out):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
