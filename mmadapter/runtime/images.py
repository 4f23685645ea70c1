"""The one image loader of every path: training and feature extraction (``mmadapter.data.fewshot.load_image``),
``predict --checkpoint`` and ONNX serving (``mmadapter.runtime.images.read_images``).

Both preprocessing paths (open_clip's transform in torch, the numpy copy in ``mmadapter/runtime/preprocess.py``)
take what :func:`open_image` returns and do, in open_clip's order: resize the shortest side (bicubic),
centre crop, convert to RGB, scale to [0, 1], normalise. So the loader leaves 8-bit images in their
own mode: converting RGBA or palette images to RGB *before* the resize (as the loaders here once did)
gives other pixels than open_clip's conversion after the crop (PIL resizes RGBA with premultiplied
alpha and palette images with nearest-neighbour).

What the loader decides, for every path alike (:func:`open_image` for files; :func:`prepare_image`,
which it calls, for a PIL image made or opened in memory, so that the API's in-memory images get the
same pixels as the same picture from a file):

- Size caps, checked from the header before anything is decoded: at most :data:`MAX_PIXELS` pixels,
  and a long side at most :data:`MAX_ASPECT_RATIO` times the short one (resizing the short side to the
  model's size scales the long side by the same factor: a 277-byte 1x100000 PNG would become a
  224x22,400,000 image, gigabytes). With the model's size known, the resized image is held to
  :data:`MAX_RESIZED_PIXELS` as well. PIL's own decompression-bomb check (warning, then error, above
  ~89 and ~179 megapixels) is caught and reported the same way.
- Modes. 8-bit ``RGB``, ``L``, ``P``, ``RGBA``, ``LA`` are returned as they are. 16-bit and 32-bit
  integer grey (``I;16*``, ``I``) are read as 16-bit values (0..65535, ``I`` clipped to that range)
  and scaled to 8-bit ``L`` (65535 -> 255; PIL's own conversion clips them at 255, so nearly every
  16-bit image became white). Float grey (``F``, e.g. a float TIFF) is taken as intensities in [0, 1],
  the convention of float image data, clipped and scaled to ``L`` (PIL's conversion truncates 0.5 to
  0, black); non-finite floats are refused. ``1`` becomes ``L`` (0/255). ``PA`` becomes ``RGBA``
  (PIL would interpolate palette indices with the bicubic filter, mixing unrelated colours), and
  ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX`` and any other mode become ``RGB``.
- Animated and multi-page files (GIF, APNG, WebP, TIFF): the first frame.
- EXIF orientation is *not* applied: open_clip's transform does not apply it, and embeddings must
  match those of open_clip users and of models trained on the stored pixel grid.
- Every failure (missing file, unknown format, truncated data, oversized, bad header) is an
  :class:`ImageReadError`, a one-line :class:`DataError` naming the file; callers that go on past a bad
  image turn it into an :class:`ImageSkip`.

No torch or open_clip here: the serving runtime imports this module.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from mmadapter.errors import DataError
from mmadapter.files import first_line

# 40 megapixels: above any camera photo in common use (a 45 MP full-frame sensor is the rare
# exception), and what a decoded RGBA image of that size costs (160 MB, once more for a conversion)
# is still affordable on a serving machine.
MAX_PIXELS = 40_000_000
# Long side / short side. A centre crop of a 100:1 image shows the model 1% of it, and its resized
# form stays small (224x22,400 at 224 px, 5 MP; 518x51,800 at 518 px, 27 MP).
MAX_ASPECT_RATIO = 100
# The image after the shortest-side resize, when the model's input size is known.
MAX_RESIZED_PIXELS = 32_000_000

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

KEPT_MODES = ("RGB", "L", "P", "RGBA", "LA")  # 8-bit modes open_clip's transform handles itself
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_WITH_ALPHA = {"PA": "RGBA", "RGBa": "RGBA", "La": "LA"}

# warnings.catch_warnings() swaps process-wide state; one lock keeps this module's own threads from
# restoring each other's filters out of order (only the header read is under it).
_OPEN_LOCK = threading.Lock()
_FILE_OBJECT = re.compile(r"<_io\.\w+ (?:name=.*?|object at 0x[0-9a-f]+)>")


class ImageReadError(DataError):
    """An image file that cannot be used; ``reason`` is the problem without the path."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {path}: {reason}")


@dataclass(frozen=True)
class ImageSkip:
    """An image left out of a result list, and why (one line)."""

    path: Path
    reason: str


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    images = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not images:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return images


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """torchvision's rule for ``Resize(int)``: the short side becomes ``short_side``, the long side is
    scaled by the same factor and truncated."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def size_problem(width: int, height: int, short_side: int | None = None) -> str | None:
    """Why an image of this size is refused (None: it is not). Needs only the header's size."""
    if width < 1 or height < 1:
        return f"it has no pixels ({width}x{height})"
    if width * height > MAX_PIXELS:
        return (f"{width}x{height} is {width * height / 1e6:.0f} megapixels, "
                f"over the {MAX_PIXELS // 10**6}-megapixel limit")
    long, short = max(width, height), min(width, height)
    if long > MAX_ASPECT_RATIO * short:
        return (f"{width}x{height} has an aspect ratio of {long / short:.0f}:1, over the {MAX_ASPECT_RATIO}:1 limit "
                "(resizing its short side to the model's size would make it huge)")
    if short_side is not None:
        new_w, new_h = resized_size(width, height, short_side)
        if new_w * new_h > MAX_RESIZED_PIXELS:
            return (f"{width}x{height} resized to {new_w}x{new_h} for the model is over the "
                    f"{MAX_RESIZED_PIXELS // 10**6}-megapixel limit")
    return None


def _bomb_reason(exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    claimed = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
    return f"its header claims {claimed}, over the {MAX_PIXELS // 10**6}-megapixel limit"


def _to_eight_bit(img: Image.Image) -> Image.Image:
    """The loader's mode policy (module docstring); ``img`` is fully loaded."""
    mode = img.mode
    if mode == "P":
        # Transparency never reaches the pixels (converting P to RGB ignores it), but PIL warns about
        # it on every conversion, which open_clip's transform does for each image.
        img.info.pop("transparency", None)
    if mode in KEPT_MODES:
        return img
    if mode in _SIXTEEN_BIT:
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        # Rounded division by 257: 0 -> 0, 32768 -> 128, 65535 -> 255.
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("float image with NaN or infinite pixels")
        return Image.fromarray(np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    if mode == "1":
        return img.convert("L")
    return img.convert(_WITH_ALPHA.get(mode, "RGB"))


def prepare_image(img: Image.Image, name: str | Path, short_side: int | None = None) -> Image.Image:
    """One opened PIL image (from a file or made in memory) checked, fully decoded (first frame) and
    in the loader's mode policy: the one pixel path, so that a picture in memory gives the pixels it
    gives from a file. ``name`` names it in errors (a path, or e.g. ``image 3``). The caller's image
    is never changed. Raises :class:`ImageReadError`."""
    try:
        problem = size_problem(img.width, img.height, short_side)
        if problem is not None:
            raise ImageReadError(name, problem)
        img.load()  # the full decode: truncated or corrupt data fails here, not later
        if getattr(img, "n_frames", 1) > 1 or img.mode == "P":
            # The first frame, detached from the file and the plugin's frame state; a palette image is
            # copied because _to_eight_bit edits its info (the caller's object stays as it was).
            img = img.copy()
        return _to_eight_bit(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, _bomb_reason(exc)) from None
    except Exception as exc:  # noqa: BLE001 - PIL's plugins raise OSError, SyntaxError, ValueError,
        # struct.error, EOFError, IndexError, ... for hostile files; all mean "not a usable image".
        raise ImageReadError(name, _reason(exc)) from None


def _reason(exc: BaseException) -> str:
    """The error's first line without the repr of the file object PIL read from
    (``<_io.BufferedReader name='x.png'>``): the path is named by the caller already."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image in a format PIL can read"
    return _FILE_OBJECT.sub("the file", first_line(exc))


def open_image(path: str | Path, short_side: int | None = None) -> Image.Image:
    """Open, check and fully decode one image file (first frame), in the loader's mode policy.

    ``short_side``: the model's input size, if known, to bound the resized image too. Raises
    :class:`ImageReadError` (a :class:`DataError`) for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "not found" if not path.exists() else "not a file")
    try:
        with open(path, "rb") as fh:
            return _decode(fh, path, short_side)
    except OSError as exc:  # opening the file itself; what PIL raises is handled in _decode
        raise ImageReadError(path, _reason(exc)) from None


def decode_image(data: bytes, short_side: int | None = None, name: str = "<image bytes>") -> Image.Image:
    """:func:`open_image` for an encoded image held in memory (an inference server's request), with
    the same checks and mode policy; ``name`` stands for the file in the error."""
    return _decode(io.BytesIO(bytes(data)), Path(name), short_side)


def _decode(fh: BinaryIO, path: Path, short_side: int | None) -> Image.Image:
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Above PIL's warning threshold our own (lower) cap refuses the image; the warning
            # would only add a stray stderr line.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh)
        return prepare_image(img, path, short_side)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, _bomb_reason(exc)) from None
    except Exception as exc:  # noqa: BLE001 - as in prepare_image: PIL's many errors for hostile files
        raise ImageReadError(path, _reason(exc)) from None


def read_images(
    paths: Sequence[str | Path], short_side: int | None = None, strict: bool = False
) -> list[Image.Image | ImageSkip]:
    """:func:`open_image` for each path, in order; a bad image becomes an :class:`ImageSkip`
    (``strict``: its error is raised instead)."""
    out: list[Image.Image | ImageSkip] = []
    for path in paths:
        try:
            out.append(open_image(path, short_side))
        except ImageReadError as exc:
            if strict:
                raise
            out.append(ImageSkip(exc.path, exc.reason))
    return out


__all__ = [
    "IMAGE_EXTENSIONS",
    "KEPT_MODES",
    "MAX_ASPECT_RATIO",
    "MAX_PIXELS",
    "MAX_RESIZED_PIXELS",
    "ImageReadError",
    "ImageSkip",
    "decode_image",
    "is_image_file",
    "list_images",
    "open_image",
    "prepare_image",
    "read_images",
    "resized_size",
    "size_problem",
]
