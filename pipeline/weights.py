"""The checkpoint manifest: every model loads from a local file named in weights/manifest.toml."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MANIFEST = Path(__file__).resolve().parents[1] / "weights" / "manifest.toml"


class MissingWeights(FileNotFoundError):
    """A checkpoint slot has no file; the message says which file and how to get it."""


@dataclass(frozen=True)
class Slot:
    name: str
    file: str
    kind: str
    source: str
    url: str = ""
    license: str = ""
    sha256: str = ""
    arch: str = ""

    @property
    def path(self) -> Path:
        return weights_dir() / self.file

    @property
    def present(self) -> bool:
        return self.kind == "bundled" or self.path.is_file()

    def how_to_get(self) -> str:
        if self.url:
            return f"run `shopfluence weights fetch {self.name}` on a machine with internet access ({self.url})"
        return self.source

    def require(self) -> Path:
        """The checked path of this slot's file, or MissingWeights with what to do."""
        if not self.path.is_file():
            raise MissingWeights(
                f"missing weights for '{self.name}': {self.path} does not exist. To get it: "
                f"{self.how_to_get()}; then copy it to {self.path}"
            )
        return self.path


def weights_dir() -> Path:
    return Path(os.environ.get("SHOPFLUENCE_WEIGHTS", MANIFEST.parent))


def load_manifest(path: Path = MANIFEST) -> dict[str, Slot]:
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    return {name: Slot(name=name, **fields) for name, fields in raw.items()}


def slot(name: str) -> Slot:
    slots = load_manifest()
    if name not in slots:
        raise KeyError(f"no weights slot '{name}' in {MANIFEST}; known: {', '.join(slots)}")
    return slots[name]


def resolve(spec: str | None) -> Path | None:
    """A weights spec from config: a manifest slot name, a file path, or None (untrained)."""
    if spec is None:
        return None
    if spec in load_manifest():
        return slot(spec).require()
    p = Path(spec)
    if not p.is_file():
        raise MissingWeights(f"weights file {p} does not exist (and '{spec}' is not a manifest slot)")
    return p


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check(name: str) -> str:
    """'ok', 'missing', 'bundled', 'present (no published sha256)' or 'CHECKSUM MISMATCH'."""
    s = slot(name)
    if s.kind == "bundled":
        return "bundled"
    if not s.path.is_file():
        return "missing"
    if not s.sha256:
        return "present (no published sha256)"
    return "ok" if sha256_of(s.path) == s.sha256 else "CHECKSUM MISMATCH"


def fetch(name: str, url: str | None = None, timeout: float = 60.0) -> Path:
    """Download a slot's file from its source (or ``url``), verify sha256, move into place."""
    s = slot(name)
    url = url or s.url
    if not url:
        raise MissingWeights(f"'{name}' has no download URL: {s.source}")
    s.path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=s.path.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                shutil.copyfileobj(r, tmp)
            tmp.close()
            digest = sha256_of(Path(tmp.name))
            if s.sha256 and digest != s.sha256:
                raise ValueError(f"{url}: sha256 {digest} does not match the manifest's {s.sha256}")
            os.replace(tmp.name, s.path)
        finally:
            if os.path.exists(tmp.name):
                os.unlink(tmp.name)
    return s.path


def set_sha256(name: str, digest: str, path: Path = MANIFEST) -> None:
    """Record a slot's sha256 in the manifest text (keeps its comments and layout)."""
    lines = path.read_text().splitlines(keepends=True)
    inside = False
    for i, line in enumerate(lines):
        if line.startswith("["):
            inside = line.strip() == f"[{name}]"
        elif inside and line.startswith("sha256"):
            lines[i] = f'sha256 = "{digest}"\n'
            path.write_text("".join(lines))
            return
    raise KeyError(f"slot [{name}] with a sha256 line not found in {path}")
