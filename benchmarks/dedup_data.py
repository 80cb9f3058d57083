"""The near-duplicate benchmark sets: references, planted copies and hard negatives.

`build`: the photographs that ship inside scikit-image (nothing is downloaded). References are
crops of some photos; positives are edited copies of those crops (see
`dedup_transforms.TRANSFORMS`); hard negatives are other crops of the same photos that overlap a
reference by at most `MAX_NEG_OVERLAP`, plus crops of photos that have no reference at all.

`build_real`: the same construction over real photographs and illustrations from Debian's
wallpaper packages (`dedup_photos.py`), with the negatives that fool a luminance descriptor:
smooth photos (sky, water, fog), flat illustrations and scikit-image's graphics, none of which
has a copy in the pool, beside other crops of the copied photos. Most references are
distractors (no copy of them in the pool), as most of ImageNet is for any pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import skimage.data
from PIL import Image

from benchmarks import dedup_photos
from benchmarks.dedup_transforms import NEGATIVE_TRANSFORMS, TRANSFORMS, encode

# Every natural photograph bundled in the scikit-image wheel (no pooch download needed).
# Left out: graphics (colorwheel, logo, horse, checkerboard), 25x25 faces (lfw_subset), the
# 102x102 microaneurysms crop, `cat` (an alias of chelsea) and the right view of
# stereo_motorcycle (the same scene from a shifted viewpoint: neither clearly a copy nor not).
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "motorcycle",
    "page",
    "retina",
    "rocket",
    "text",
)
# Photos with no reference: every crop of them in the pool is an unrelated-image negative.
HELD_OUT = ("coins", "gravel", "hubble_deep_field", "page")
MAX_SIDE = 640  # ImageNet-like sizes; also keeps the benchmark fast
MAX_NEG_OVERLAP = 0.25  # intersection / smaller area, against every reference of the photo


@dataclass(frozen=True)
class Item:
    key: str
    source: str
    data: bytes
    label: str  # transform name for positives; "neg:<kind>" for negatives
    truth: str | None  # source of the reference it copies, None for negatives


def load_photo(name: str) -> Image.Image:
    array = (
        skimage.data.stereo_motorcycle()[0]
        if name == "motorcycle"
        else getattr(skimage.data, name)()
    )
    image = Image.fromarray(array).convert("RGB")
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _window(rng: np.random.Generator, w: int, h: int, lo: float, hi: float, corner=None):
    cw, ch = round(w * rng.uniform(lo, hi)), round(h * rng.uniform(lo, hi))
    if corner is None:
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    else:  # pinned near a corner, jittered by up to 5% of the side
        jx, jy = int(rng.integers(0, w // 20 + 1)), int(rng.integers(0, h // 20 + 1))
        x0 = jx if corner[0] == 0 else w - cw - jx
        y0 = jy if corner[1] == 0 else h - ch - jy
    return (x0, y0, x0 + cw, y0 + ch)


def reference_windows(rng: np.random.Generator, w: int, h: int) -> list[tuple[int, ...]]:
    """Two reference crops in opposite corners, each 50-60% of the side: little shared content."""
    first = ((0, 0), (1, 1)) if rng.random() < 0.5 else ((1, 0), (0, 1))
    return [_window(rng, w, h, 0.5, 0.6, corner) for corner in first]


def negative_windows(rng, w, h, refs, count: int) -> list[tuple[int, ...]]:
    found: list[tuple[int, ...]] = []
    for _ in range(2000):
        win = _window(rng, w, h, 0.35, 0.6)
        if all(_overlap(win, r) <= MAX_NEG_OVERLAP for r in refs + found):
            found.append(win)
            if len(found) == count:
                break
    return found


def _pool_item(key: str, data: bytes, label: str, truth: str | None = None) -> Item:
    return Item(key, f"pool:{key}", data, label, truth)


def _copies_of(name: str, photo: Image.Image, rng, refs: list, pool: list, negatives: int) -> None:
    """A copied photo: two reference crops, each with its exact copy and edited copies in the
    pool, and other crops of the photo as same-photo hard negatives."""
    w, h = photo.size
    neg_names = list(NEGATIVE_TRANSFORMS)
    windows = reference_windows(rng, w, h)
    for r, win in enumerate(windows):
        crop = photo.crop(win)
        source = f"ref:{name}/{r}"
        refs.append(Item(f"{name}/ref{r}", source, encode(crop, quality=95), "reference", None))
        pool.append(_pool_item(f"{name}/ref{r}/exact", refs[-1].data, "exact_copy", source))
        for t, fn in TRANSFORMS.items():
            pool.append(_pool_item(f"{name}/ref{r}/{t}", fn(crop, rng), t, source))
    for i, win in enumerate(negative_windows(rng, w, h, windows, negatives)):
        crop = photo.crop(win)
        for t in rng.choice(neg_names, size=2, replace=False):
            data = NEGATIVE_TRANSFORMS[t](crop, rng)
            pool.append(_pool_item(f"{name}/neg{i}/{t}", data, "neg:same_photo_crop"))


def build(seed: int = 0, negatives_per_photo: int = 4, held_out_crops: int = 6):
    """(reference items, pool items). Pool keys are unique; labels say what each item is."""
    rng = np.random.default_rng(seed)
    refs: list[Item] = []
    pool: list[Item] = []
    neg_names = list(NEGATIVE_TRANSFORMS)
    for name in PHOTOS:
        photo = load_photo(name)
        w, h = photo.size
        if name in HELD_OUT:
            for i in range(held_out_crops):
                crop = photo.crop(_window(rng, w, h, 0.5, 0.9))
                t = neg_names[int(rng.integers(len(neg_names)))]
                data = NEGATIVE_TRANSFORMS[t](crop, rng)
                pool.append(_pool_item(f"{name}/other{i}/{t}", data, "neg:other_photo"))
            continue
        _copies_of(name, photo, rng, refs, pool, negatives_per_photo)
    return refs, pool


SKIMAGE_GRAPHICS = ("logo", "colorwheel", "horse")  # flat graphics: illustration negatives


def _real_image(photo: dedup_photos.Photo) -> Image.Image:
    if photo.package != "skimage":
        return dedup_photos.load(photo)
    array = getattr(skimage.data, photo.name)()
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array).convert("RGB")


def _real_groups(rng: np.random.Generator) -> tuple[list, list, list]:
    """Each kind shuffled and dealt into three groups: copied, distractor, held out."""
    groups: tuple[list, list, list] = ([], [], [])
    for kind in ("smooth", "textured", "illustration"):
        photos = [p for p in dedup_photos.CATALOGUE if p.kind == kind]
        if kind == "illustration":
            photos += [dedup_photos.Photo(n, "skimage", n, kind) for n in SKIMAGE_GRAPHICS]
        for j, i in enumerate(rng.permutation(len(photos))):
            groups[j % 3].append(photos[i])
    return groups


def build_real(
    seed: int = 0,
    negatives_per_photo: int = 4,
    held_out_crops: int = 20,
    graphic_crops: int = 10,
    distractors_per_photo: int = 20,
):
    """(reference items, pool items) of real photographs; seed 0 is held out (1-3: development).

    Copied photos give two references each (and their copies in the pool, plus other crops of
    the photo as negatives); illustrations are never copied. Distractor photos give references
    only; held-out photos give pool negatives only (the whole image and crops of 30-80%)."""
    rng = np.random.default_rng(seed + 1000)
    refs: list[Item] = []
    pool: list[Item] = []
    neg_names = list(NEGATIVE_TRANSFORMS)
    copied, distractor, held = _real_groups(rng)

    def negative(key: str, image: Image.Image, label: str) -> None:
        t = neg_names[int(rng.integers(len(neg_names)))]
        pool.append(_pool_item(f"{key}/{t}", NEGATIVE_TRANSFORMS[t](image, rng), label))

    for p in copied:
        if p.kind == "illustration":
            continue  # below, as distractor references
        _copies_of(p.name, _real_image(p), rng, refs, pool, negatives_per_photo)
    for p in distractor + [p for p in copied if p.kind == "illustration"]:
        photo = _real_image(p)
        w, h = photo.size
        for i in range(distractors_per_photo):
            crop = photo.crop(_window(rng, w, h, 0.4, 0.9))
            refs.append(Item(f"{p.name}/d{i}", f"ref:{p.name}/d{i}", encode(crop, quality=95),
                             "reference", None))  # fmt: skip
    for p in held:
        photo = _real_image(p)
        w, h = photo.size
        illustration = p.kind == "illustration"
        label = "neg:other_illustration" if illustration else f"neg:other_{p.kind}_photo"
        negative(f"{p.name}/whole", photo, label)
        for i in range((graphic_crops if illustration else held_out_crops) - 1):
            negative(f"{p.name}/other{i}", photo.crop(_window(rng, w, h, 0.3, 0.8)), label)
    return refs, pool
