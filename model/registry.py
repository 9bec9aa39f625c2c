"""Named weights: the trained models this package knows by name (as torchvision's weights enums and
pyiqa's default configs), each with where its file is, its sha256, how it was made and what it measured.

    from model import create_model
    vqa, inter = create_model(weights="tiny-demo")      # verified against the registered sha256

The entries live in `model/weights/registry.json` (committed; `REGISTRY` is what this process read).
A file entry's `file` is relative to that folder; an entry whose file is absent is "not installed".
`install_weights` is the only writer of the folder and the JSON, and only `python -m jobs.demo_model
--install` (in a development checkout) calls it: training never writes into the package.

Which model runs when a job names none (no --checkpoint, --preset or --weights) is declared here, once:
the `DEFAULT_WEIGHTS` entry where it is installed, else the `UNTRAINED_PRESET` preset, untrained
(weights from `create_model(init_seed=0)`; the jobs say UNTRAINED).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

REGISTRY_FILE = Path(__file__).parent / "weights" / "registry.json"
DEFAULT_WEIGHTS = "tiny-demo"
UNTRAINED_PRESET = "tiny"
FORMAT = "securevqa-weights-registry"
FORMAT_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


class WeightsNotInstalledError(FileNotFoundError):
    """A registered entry whose file is not there (`securevqa weights` lists it as not installed)."""


class WeightsIntegrityError(ValueError):
    """A weights file whose sha256 is not the registered one (or an entry with none registered)."""

    def __init__(self, name: str, location: str, expected: str | None, actual: str) -> None:
        self.name, self.location, self.expected, self.actual = name, location, expected, actual
        if expected is None:
            msg = (f"weights {name!r} ({location}) have no sha256 in the registry (actual {actual}); "
                   "install them with `python -m jobs.demo_model --install` (model.registry.install_weights)")
        else:
            msg = (f"weights {name!r} ({location}) fail their sha256 check: expected {expected}, actual {actual} "
                   "(a changed or corrupt file; reinstall it, or load it explicitly with --checkpoint)")
        super().__init__(msg)


@dataclass(frozen=True)
class Weights:
    """One registered model. Exactly one of `file` (relative to `root`, the registry file's folder) or
    `uri` (a path or fsspec URI, e.g. s3://...)."""

    name: str
    preset: str  # the architecture (model/config.py); the checkpoint's own config still wins where it has one
    file: str | None = None
    uri: str | None = None
    sha256: str | None = None
    recipe: Mapping[str, Any] = field(default_factory=dict)  # command, code commit, seed, training time
    data: str = ""  # what it was trained, selected and tested on
    metrics: Mapping[str, Any] = field(default_factory=dict)  # measured on `metrics["set"]`
    notes: str = ""
    root: Path = field(default=REGISTRY_FILE.parent, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a weights entry needs a name")
        if (self.file is None) == (self.uri is None):
            raise ValueError(f"weights {self.name!r}: give exactly one of file (in the package) or uri")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"weights {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        object.__setattr__(self, "recipe", MappingProxyType(dict(self.recipe)))
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "root", Path(self.root))

    @property
    def location(self) -> str:
        """The file's absolute path, or the URI."""
        return str(self.root / self.file) if self.file is not None else str(self.uri)

    @property
    def installed(self) -> bool | None:
        """Whether the file is there; None for a remote URI (not checked without reading it)."""
        if self.uri is not None and "://" in self.uri:
            return None
        return os.path.isfile(self.location)

    @property
    def status(self) -> str:
        return {True: "installed", False: "not installed", None: "remote"}[self.installed]

    def read(self, storage_options: Mapping[str, Any] | None = None) -> Any:
        """The checkpoint: read once, checked against `sha256`, then loaded as `read_checkpoint` loads
        (`torch.load(..., map_location="cpu", weights_only=True)`: loading never executes code).

        Raises WeightsNotInstalledError (a FileNotFoundError) where the file is absent, and
        WeightsIntegrityError (a ValueError) naming the expected and actual digests where they differ
        or the entry registers none.
        """
        import torch

        data = self._bytes(storage_options)
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.sha256:
            raise WeightsIntegrityError(self.name, self.location, self.sha256, actual)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def _bytes(self, storage_options: Mapping[str, Any] | None) -> bytes:
        if self.installed is False:
            raise WeightsNotInstalledError(
                f"weights {self.name!r} are not installed: no file {self.location} (`securevqa weights` lists "
                "what is installed; the demo model's is made by `make demo-model`)")
        if "://" in self.location:
            import fsspec

            with fsspec.open(self.location, "rb", **dict(storage_options or {})) as f:
                return f.read()
        return Path(self.location).read_bytes()

    def to_dict(self) -> dict[str, Any]:
        """The entry as registry.json holds it."""
        return {"name": self.name, "preset": self.preset, "file": self.file, "uri": self.uri, "sha256": self.sha256,
                "recipe": dict(self.recipe), "data": self.data, "metrics": dict(self.metrics), "notes": self.notes}


def load_registry(path: str | os.PathLike[str] = REGISTRY_FILE) -> dict[str, Weights]:
    """The entries of a registry file, by name; file entries are relative to its folder.

    Raises FileNotFoundError (no such file) and ValueError (not a registry, duplicate names, a bad entry).
    """
    path = Path(path)
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a weights registry (format {doc.get('format')!r}, expected {FORMAT!r})")
    entries: dict[str, Weights] = {}
    for d in doc.get("weights", []):
        w = Weights(**d, root=path.parent)
        if w.name in entries:
            raise ValueError(f"{path}: weights {w.name!r} registered twice")
        entries[w.name] = w
    return entries


# This process's registry: the package's registry.json, plus whatever `register_weights` added here
# (in this process only: Ray actors see the JSON entries).
REGISTRY: dict[str, Weights] = load_registry() if REGISTRY_FILE.exists() else {}


def get_weights(name: str) -> Weights:
    """The entry registered as `name`. Raises ValueError for an unknown name, listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or f"none ({REGISTRY_FILE} missing)"
        raise ValueError(f"unknown weights {name!r}; known: {known} (`securevqa weights` lists them)") from None


def list_weights() -> list[Weights]:
    """Every registered entry, installed or not, in registry order."""
    return list(REGISTRY.values())


def register_weights(weights: Weights, *, overwrite: bool = False) -> Weights:
    """Add an entry to this process's registry (not to registry.json: see `install_weights`).
    Raises ValueError where the name is taken and `overwrite` is false."""
    if weights.name in REGISTRY and not overwrite:
        raise ValueError(f"weights {weights.name!r} are already registered (overwrite=True replaces them)")
    REGISTRY[weights.name] = weights
    return weights


def default_weights() -> Weights | None:
    """The model of a job that names none: the `DEFAULT_WEIGHTS` entry where it is installed; None
    otherwise, meaning the `UNTRAINED_PRESET` preset, untrained. An installed file still has to pass its
    sha256 check when it is loaded: a stray file never silently becomes the default."""
    w = REGISTRY.get(DEFAULT_WEIGHTS)
    return w if w is not None and w.installed is not False else None


def sha256_of(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def install_weights(
    source: str | os.PathLike[str],
    name: str,
    *,
    registry_file: str | os.PathLike[str] = REGISTRY_FILE,
    recipe: Mapping[str, Any] | None = None,
    data: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    notes: str | None = None,
) -> Weights:
    """Copy the checkpoint `source` (our format) beside `registry_file` and record it there: the entry
    `name` gets the file's sha256, the checkpoint's preset, and `recipe`, `data`, `metrics`, `notes`
    (each one not given keeps its registered value). File and JSON are each replaced atomically.

    For a development checkout (`python -m jobs.demo_model --install`); training never calls it.
    Raises FileNotFoundError (no `source` or no registry file) and ValueError (not our checkpoint
    format; `name` registered with a URI).
    """
    from .checkpoint import detect_format, read_checkpoint

    registry_file, source = Path(registry_file), Path(source)
    ckpt = read_checkpoint(source)  # weights_only; refuses a file that is not a checkpoint
    if detect_format(ckpt) != "securevqa":
        raise ValueError(f"{source} is a {detect_format(ckpt)} checkpoint; only ours (save_checkpoint) installs")
    doc = json.loads(registry_file.read_text())
    entries = doc.setdefault("weights", [])
    old = next((d for d in entries if d["name"] == name), None)
    if old is not None and old.get("uri") is not None:
        raise ValueError(f"weights {name!r} are registered at {old['uri']}, not as a package file")
    file = old["file"] if old is not None else f"securevqa_{re.sub(r'[^A-Za-z0-9]+', '_', name)}.pt"
    dest = registry_file.parent / file
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(source, tmp)
    digest = sha256_of(tmp)
    os.replace(tmp, dest)
    given = {"recipe": recipe, "data": data, "metrics": metrics, "notes": notes}
    entry = Weights(**{**(old or {"name": name}), "preset": ckpt["config"].get("name", "custom"), "file": file,
                       "uri": None, "sha256": digest, **{k: v for k, v in given.items() if v is not None}},
                    root=registry_file.parent)
    if old is None:
        entries.append(entry.to_dict())
    else:
        entries[entries.index(old)] = entry.to_dict()
    tmp = registry_file.with_name(registry_file.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, registry_file)
    if registry_file.resolve() == REGISTRY_FILE.resolve():
        REGISTRY[name] = entry
    return entry


def weights_table(entries: list[Weights] | None = None) -> str:
    """`securevqa weights`: one line per entry (name, preset, installed?, sha256 prefix, metrics, recipe)."""
    rows = [("name", "preset", "status", "sha256", "metrics", "recipe")]
    for w in list_weights() if entries is None else entries:
        metrics = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in w.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        recipe = str(w.recipe.get("command", "")) or "-"
        if w.recipe.get("commit"):
            recipe += f" @ {str(w.recipe['commit'])[:9]}" + ("+dirty" if w.recipe.get("dirty") else "")
        rows.append((w.name, w.preset, w.status, (w.sha256 or "-")[:12], metrics or "-", recipe))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(n) for c, n in zip(r, widths)) + "  " + r[-1] for r in rows)


__all__ = [
    "DEFAULT_WEIGHTS",
    "REGISTRY",
    "REGISTRY_FILE",
    "UNTRAINED_PRESET",
    "Weights",
    "WeightsIntegrityError",
    "WeightsNotInstalledError",
    "default_weights",
    "get_weights",
    "install_weights",
    "list_weights",
    "load_registry",
    "register_weights",
    "weights_table",
]
