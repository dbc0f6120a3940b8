"""An OCI image archive for `ctr images import` from a buildah `dir:` copy, holding only the
blobs containerd lacks (it resolves the others from its content store).

Usage: oci_archive.py COPY_DIR IMAGE_NAME OUT.tar HAVE_FILE
  HAVE_FILE: the digests containerd holds, one per line (`ctr content ls -q`).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def main(copy: Path, image: str, out: Path, have_file: Path) -> None:
    have = set(have_file.read_text().split())
    manifest_bytes = (copy / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    blobs = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": manifest["mediaType"], "digest": manifest_digest, "size": len(manifest_bytes),
        # containerd names the imported image after this annotation.
        "annotations": {"io.containerd.image.name": image, "org.opencontainers.image.ref.name": image}}]}
    with tarfile.open(out, "w") as tar:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add_bytes("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add_bytes("index.json", json.dumps(index).encode())
        add_bytes(f"blobs/sha256/{manifest_digest[7:]}", manifest_bytes)
        for digest in blobs:
            if digest not in have or digest == manifest["config"]["digest"]:
                tar.add(copy / digest[7:], arcname=f"blobs/sha256/{digest[7:]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
