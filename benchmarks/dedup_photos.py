"""Real photographs and illustrations for the dedup benchmark, from Debian's wallpaper packages.

Photos with large smooth regions (sky, water, fog, bokeh), textured photos and flat
illustrations: the low-texture images that land near each other in descriptor space. Fetched
with `apt-get download PKG=VERSION` + `dpkg -x` (no root, nothing installed system-wide; the
pinned version, or the archive's current one if it is gone), then each image used is reduced
to at most 640 px (ImageNet-like) and cached as PNG under `data/bench/photos/`. Licences are the
packages' own (debian/copyright), recorded per package below; the images are never committed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

CACHE = Path(__file__).resolve().parents[1] / "data" / "bench" / "photos"
MAX_SIDE = 640


class PhotosUnavailable(RuntimeError):
    """apt-get/dpkg missing, or the archive unreachable: the real-photo set cannot be built."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    licence: str  # as the package's debian/copyright states it for the files used


PACKAGES = {
    "lomiri16": Package("lomiri-wallpapers-16.04", "20.04.0-2", "CC-BY-4.0 / CC-BY-SA-4.0 / CC0"),
    "lomiri20": Package("lomiri-wallpapers-20.04", "20.04.0-2", "CC-BY-SA-3.0"),
    "mate": Package("mate-backgrounds", "1.26.0-1", "GPL-2+ (Ubuntu-Mate-*: CC-BY-SA-4.0)"),
    "plasma": Package("plasma-workspace-wallpapers", "4:5.27.5-2", "LGPL-3 / CC-BY-SA-4.0"),
    "ukui": Package("ukui-wallpapers", "20.04.3-1.1", "CC-BY-SA-3.0"),
}
_L16 = "usr/share/backgrounds/"
_MATE = "usr/share/backgrounds/mate/"
_KDE = "usr/share/wallpapers/"


@dataclass(frozen=True)
class Photo:
    name: str
    package: str  # key of PACKAGES
    path: str  # inside the package
    kind: str  # "smooth" (sky, water, fog, bokeh), "textured", or "illustration"


def _kde(name: str, kind: str, file: str = "1920x1080.jpg") -> Photo:
    return Photo(name, "plasma", f"{_KDE}{name}/contents/images/{file}", kind)


CATALOGUE: tuple[Photo, ...] = (
    # lomiri-wallpapers-16.04: photographs
    Photo("bridge", "lomiri16", _L16 + "Bridge_by_Sander_Klootwijk.jpg", "smooth"),
    Photo("dragonfly", "lomiri16", _L16 + "Dragonfly_by_Bolly.jpg", "textured"),
    Photo("fig", "lomiri16", _L16 + "Picture_0B_by_freespace.jpg", "smooth"),
    Photo("brushes", "lomiri16", _L16 + "Picture_1A_by_freespace.jpg", "textured"),
    Photo("wine", "lomiri16", _L16 + "Wine_by_Jakkub_Mede.jpg", "textured"),
    Photo("aitzgorri", "lomiri16", _L16 + "aitzgorri_by_Aitzol_Berasategi.jpg", "textured"),
    Photo("analogpattern", "lomiri16", _L16 + "analogpattern_by_Peter_Nerlich.jpg", "smooth"),
    Photo("free", "lomiri16", _L16 + "free_by_Peter_Nerlich.jpg", "smooth"),
    Photo("friends", "lomiri16", _L16 + "friends_by_Aitzol_Berasategi.jpg", "textured"),
    Photo("greentock", "lomiri16", _L16 + "greentock_by_Peter_Nerlich.jpg", "smooth"),
    Photo("life", "lomiri16", _L16 + "life_by_Aitzol_Berasategi.jpg", "textured"),
    Photo("picos", "lomiri16", _L16 + "picosdeeuropa_by_Aitzol_Berasategi.jpg", "textured"),
    Photo("seeding", "lomiri16", _L16 + "seeding_by_Clements_Engelhardt.jpg", "textured"),
    Photo("sunset", "lomiri16", _L16 + "sunset_by_Aitzol_Berasategi.jpg", "smooth"),
    Photo("umang", "lomiri16", _L16 + "umang_by_Abhishek_Mudgal.jpg", "illustration"),
    # lomiri-wallpapers-20.04
    Photo("kleiber", "lomiri20", _L16 + "Kleiber_by_Lukas_Baubkus.jpg", "smooth"),
    Photo("fossa", "lomiri20", _L16 + "Fossa_by_Jasper_Roks.jpg", "illustration"),
    Photo("infinite_sea", "lomiri20", _L16 + "Infinite-Sea_by_Aury88.jpg", "illustration"),
    Photo("painting", "lomiri20", _L16 + "Painting-Colors_by__herobrine7gamer.jpg", "illustration"),
    # mate-backgrounds
    Photo("aqua", "mate", _MATE + "nature/Aqua.jpg", "smooth"),
    Photo("blinds", "mate", _MATE + "nature/Blinds.jpg", "textured"),
    Photo("dune", "mate", _MATE + "nature/Dune.jpg", "textured"),
    Photo("freshflower", "mate", _MATE + "nature/FreshFlower.jpg", "textured"),
    Photo("garden", "mate", _MATE + "nature/Garden.jpg", "textured"),
    Photo("greenmeadow", "mate", _MATE + "nature/GreenMeadow.jpg", "textured"),
    Photo("ladybird", "mate", _MATE + "nature/LadyBird.jpg", "textured"),
    Photo("raindrops", "mate", _MATE + "nature/RainDrops.jpg", "textured"),
    Photo("storm", "mate", _MATE + "nature/Storm.jpg", "smooth"),
    Photo("twowings", "mate", _MATE + "nature/TwoWings.jpg", "smooth"),
    Photo("wood", "mate", _MATE + "nature/Wood.jpg", "smooth"),
    Photo("yellowflower", "mate", _MATE + "nature/YellowFlower.jpg", "textured"),
    Photo("mate_dark", "mate", _MATE + "desktop/Ubuntu-Mate-Dark-no-logo.png", "illustration"),
    Photo("mate_warm", "mate", _MATE + "desktop/Ubuntu-Mate-Warm-no-logo.png", "illustration"),
    Photo("mate_flow", "mate", _MATE + "abstract/Flow.png", "illustration"),
    Photo("gulp", "mate", _MATE + "abstract/Gulp.png", "illustration"),
    Photo("float", "mate", _MATE + "desktop/Float-into-MATE.png", "illustration"),
    Photo("stripes", "mate", _MATE + "desktop/Stripes.png", "illustration"),
    Photo("greentraditional", "mate", _MATE + "desktop/GreenTraditional.jpg", "illustration"),
    # plasma-workspace-wallpapers
    _kde("BytheWater", "smooth"),
    _kde("ColdRipple", "smooth"),
    _kde("ColorfulCups", "textured", "2560x1600.jpg"),
    _kde("DarkestHour", "smooth"),
    _kde("EveningGlow", "textured"),
    _kde("FallenLeaf", "textured"),
    _kde("Grey", "textured"),
    _kde("Kite", "smooth"),
    _kde("OneStandsOut", "textured"),
    _kde("Path", "textured"),
    _kde("summer_1am", "smooth"),
    _kde("Volna", "smooth", "5120x2880.jpg"),
    _kde("Autumn", "illustration"),
    _kde("PastelHills", "illustration"),
    _kde("SafeLanding", "illustration", "1622x2880.jpg"),
    _kde("Shell", "illustration", "720x1440.jpg"),
    _kde("Flow", "illustration", "720x1440.jpg"),
    _kde("Honeywave", "illustration", "1080x1920.jpg"),
    # ukui-wallpapers: flat illustrations
    Photo("2004default", "ukui", _L16 + "2004default.jpg", "illustration"),
    Photo("calla", "ukui", _L16 + "calla.png", "illustration"),
    Photo("city", "ukui", _L16 + "city.png", "illustration"),
    Photo("desert", "ukui", _L16 + "desert.png", "illustration"),
    Photo("firstgeneration", "ukui", _L16 + "firstgeneration.jpg", "illustration"),
    Photo("fluent", "ukui", _L16 + "fluent-color.png", "illustration"),
    Photo("goldfish", "ukui", _L16 + "goldfish.png", "illustration"),
    Photo("rhythm", "ukui", _L16 + "rhythm.jpg", "illustration"),
    Photo("rollpaper", "ukui", _L16 + "rollpaper.png", "illustration"),
    Photo("string", "ukui", _L16 + "string.jpg", "illustration"),
    Photo("the_mouse", "ukui", _L16 + "the-mouse.jpg", "illustration"),
)


def _extract(package: Package, into: Path) -> None:
    """apt-get download the pinned version (any version if that one is gone), dpkg -x it."""
    with tempfile.TemporaryDirectory() as tmp:
        for spec in (f"{package.name}={package.version}", package.name):
            done = subprocess.run(
                ["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True, timeout=600
            )
            if done.returncode == 0:
                break
        else:
            raise PhotosUnavailable(
                f"apt-get download {package.name} failed: {done.stderr.strip()}"
            )
        deb = next(Path(tmp).glob("*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(into)], check=True)


def _reduce(src: Path, dst: Path) -> None:
    image = Image.open(src)
    image.draft("RGB", (2 * MAX_SIDE, 2 * MAX_SIDE))  # JPEG: decode at a reduced DCT scale
    image = image.convert("RGB")
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    image.save(dst)


def ensure(cache: Path = CACHE) -> Path:
    """Fetch every package the catalogue needs (once) and cache its images as <= 640 px PNGs."""
    missing = [p for p in CATALOGUE if not (cache / f"{p.name}.png").exists()]
    if not missing:
        return cache
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise PhotosUnavailable("the real-photo benchmark needs apt-get and dpkg (Debian/Ubuntu)")
    cache.mkdir(parents=True, exist_ok=True)
    for key in sorted({p.package for p in missing}):
        with tempfile.TemporaryDirectory() as tmp:
            _extract(PACKAGES[key], Path(tmp))
            for p in missing:
                if p.package == key:
                    _reduce(Path(tmp) / p.path, cache / f"{p.name}.png")
    return cache


def load(photo: Photo, cache: Path = CACHE) -> Image.Image:
    return Image.open(ensure(cache) / f"{photo.name}.png").convert("RGB")


if __name__ == "__main__":
    ensure()
    for p in CATALOGUE:
        print(p.name, p.kind, load(p).size)
