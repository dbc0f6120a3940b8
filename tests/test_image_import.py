"""hack/images/oci_archive.py: the archive given to `ctr images import` carries only what
containerd lacks (the 7 GiB torch layer must not travel again after a source change)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "hack" / "images" / "oci_archive.py"


def _blob(directory: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (directory / digest).write_bytes(data)
    return f"sha256:{digest}"


def test_archive_holds_manifest_config_and_only_the_missing_layers(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    config = _blob(copy, b'{"config": {}}')
    old_layer, new_layer = _blob(copy, b"torch" * 1000), _blob(copy, b"specd source")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"digest": config, "size": 14},
                "layers": [{"digest": old_layer, "size": 5000}, {"digest": new_layer, "size": 12}]}
    manifest_bytes = json.dumps(manifest).encode()
    (copy / "manifest.json").write_bytes(manifest_bytes)
    have = tmp_path / "have"
    have.write_text(f"{old_layer}\n{config}\n")  # containerd already holds these
    out = tmp_path / "import.tar"

    subprocess.run([sys.executable, str(SCRIPT), str(copy), "localhost/specd:dev", str(out), str(have)],
                   check=True)

    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        index = json.load(tar.extractfile("index.json"))
    manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()
    assert names == {"oci-layout", "index.json", f"blobs/sha256/{manifest_digest}",
                     f"blobs/sha256/{config[7:]}", f"blobs/sha256/{new_layer[7:]}"}
    (entry,) = index["manifests"]
    assert entry["digest"] == f"sha256:{manifest_digest}" and entry["size"] == len(manifest_bytes)
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/specd:dev"
