"""specd.proto: the gRPC contract, compiled from the .proto files under `specd/v1/` on first import.

The stubs are never committed or edited: the first `import specd.proto` runs grpc_tools' protoc
over the .proto files into a cache directory keyed by their digest (and the protoc / protobuf
versions), and adds that directory to this package's path, so the generated modules import as
`specd.proto.v1.serving_pb2`, `specd.proto.v1.worker_pb2_grpc`, ... Concurrent first imports
(several worker processes starting at once) each build into a private folder and rename it into
place; the first rename wins.

Cache: $SPECD_PROTO_CACHE, else $XDG_CACHE_HOME/specd/proto (~/.cache/specd/proto), else the
system temp directory when the home directory is not writable (read-only containers).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted((SOURCE_ROOT / "specd" / "v1").glob("*.proto"))


def _digest() -> str:
    import google.protobuf
    import grpc_tools

    h = hashlib.sha256()
    for path in PROTO_FILES:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    versions = f"{google.protobuf.__version__}/{getattr(grpc_tools, '__version__', '')}"
    try:
        from importlib.metadata import version

        versions += version("grpcio-tools")
    except Exception:  # not installed as a distribution: the module digest above still applies
        pass
    h.update(versions.encode())
    return h.hexdigest()[:16]


def _cache_roots() -> list[Path]:
    if os.environ.get("SPECD_PROTO_CACHE"):
        return [Path(os.environ["SPECD_PROTO_CACHE"])]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(xdg) / "specd" / "proto", Path(tempfile.gettempdir()) / f"specd-proto-{os.getuid()}"]


def _compile(out: Path) -> None:
    from grpc_tools import protoc

    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    args = ["protoc", f"-I{SOURCE_ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *(str(p.relative_to(SOURCE_ROOT)) for p in PROTO_FILES)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {[p.name for p in PROTO_FILES]}")
    # protoc writes out/specd/v1/*.py importing `specd.v1`; they live in `specd.proto.v1`
    generated = out / "specd" / "v1"
    for path in generated.iterdir():
        text = re.sub(r"^from specd\.v1 import", "from specd.proto.v1 import", path.read_text(), flags=re.M)
        path.write_text(text)
    (generated / "__init__.py").write_text("")
    generated.rename(out / "v1")
    (out / "specd").rmdir()


def _ensure_generated() -> Path:
    digest = _digest()
    errors = []
    for root in _cache_roots():
        final = root / digest
        if (final / "v1" / "__init__.py").is_file():
            return final
        try:
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
            _compile(staging)
            try:
                staging.rename(final)
            except OSError:  # another process got there first
                shutil.rmtree(staging, ignore_errors=True)
            return final
        except OSError as exc:
            errors.append(f"{root}: {exc}")
    raise RuntimeError("cannot write the generated gRPC stubs anywhere: " + "; ".join(errors))


__path__.append(str(_ensure_generated()))  # noqa: F821 - a package's __path__ is defined here
