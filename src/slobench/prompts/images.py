"""Images sized to a workload's ``image_tokens``, sent as PNG data URLs in chat messages.

A Workload row says how many prompt tokens each image costs (``image_tokens``, included in
``input_tokens``). This module turns such a count into an image that a given vision encoder
turns into exactly that many tokens (or the closest count it can reach), draws a deterministic
noisy PNG of that size, and builds the OpenAI chat content parts.

Token rules follow the serving code, not the papers (docs/prompts.md, "Images", cites each):

- :class:`FixedEncoder` (LLaVA-1.5, CLIP ViT-L/14-336): every image is resized and cropped to
  336×336, ``(336 // 14) ** 2 = 576`` tokens whatever its size (the CLS token is dropped).
- :class:`QwenVLEncoder` (Qwen2-VL, Qwen2.5-VL): ``smart_resize`` to multiples of 28 px within
  ``[min_pixels, max_pixels]``, one token per 28×28 px (14-px patches merged 2×2), plus the
  ``<|vision_start|>``/``<|vision_end|>`` tokens around each image.
- :class:`AnyResEncoder` (LLaVA-NeXT / LLaVA-1.6): the best grid pinpoint, 24×24 features per
  336-px tile, padding rows or columns removed ("unpad"), one newline feature per row, plus the
  576-feature base image.
- :class:`InternVLEncoder` (InternVL2, 2.5, 3): 448-px tiles on the grid whose aspect ratio is
  closest to the image's (at most 12 tiles), plus a thumbnail tile when there is more than one,
  256 tokens per tile, plus ``<img>``/``</img>``.
- :class:`PixtralEncoder` (Pixtral-12B): one token per 16×16 px, an ``[IMG_BREAK]`` after each
  row (``[IMG_END]`` after the last), images above 1024 px scaled down.

``tokens(width, height)`` is what the server counts for one image; ``size_for(tokens)`` an
image with exactly that count when there is one (the model's native size, else the squarest),
else the closest count (below before above: the caller gives the difference to the text, so the
request's total stays exact). Template text around an image placeholder (e.g. a newline) is
not counted here: it is the chat template's, and is measured with the rest of the template.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from slobench.errors import UserError, did_you_mean

# -- fitting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFit:
    """The image chosen for a requested token count and what it really costs."""

    width: int
    height: int
    tokens: int  # what the encoder counts for this image
    requested: int

    @property
    def exact(self) -> bool:
        return self.tokens == self.requested

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def _aspect(size: tuple[int, int]) -> float:
    return max(size) / min(size)


class VisionEncoder:
    """Common part of the encoders: ``tokens``, ``size_for`` and ``fit`` on top of each
    encoder's ``features`` (tokens replacing the image placeholder) and ``_sizes`` (images of
    exactly n tokens, preferred first: the squarest, then the smallest)."""

    name: str
    extra_tokens: int  # special tokens wrapped around each image's features

    def features(self, width: int, height: int) -> int:
        raise NotImplementedError

    def _sizes(self, tokens: int) -> list[tuple[int, int]]:
        raise NotImplementedError

    @property
    def min_tokens(self) -> int:
        raise NotImplementedError

    @property
    def max_tokens(self) -> int:
        raise NotImplementedError

    def tokens(self, width: int, height: int) -> int:
        """Prompt tokens one ``width``×``height`` image costs on the server."""
        if width < 1 or height < 1:
            raise ValueError(f"image size {width}x{height}: both sides must be at least 1 px")
        return self.features(int(width), int(height)) + self.extra_tokens

    def fit(self, tokens: int, max_aspect: float | None = None) -> ImageFit:
        """The image for ``tokens``: exact when reachable, else the closest reachable count
        (the lower one on a tie: the text takes the difference), clamped to
        ``[min_tokens, max_tokens]``. ``max_aspect`` (e.g. 4): skip images more lopsided than
        that, trading an exact count for a natural shape; by default only the model's own
        limits apply, so some exact images are long strips."""
        if max_aspect is not None and not max_aspect >= 1:
            raise ValueError(f"max_aspect {max_aspect}: an aspect ratio is at least 1")
        return _fit(self, int(tokens), None if max_aspect is None else float(max_aspect))

    def size_for(self, tokens: int, max_aspect: float | None = None) -> tuple[int, int]:
        """``(width, height)`` of :meth:`fit`; ``tokens(*size_for(n)) == n`` when n is
        reachable."""
        return self.fit(tokens, max_aspect).size

    def reachable(self, tokens: int, max_aspect: float | None = None) -> bool:
        return self.fit(tokens, max_aspect).exact


@lru_cache(maxsize=65536)
def _fit(enc: VisionEncoder, n: int, max_aspect: float | None) -> ImageFit:
    lo, hi = enc.min_tokens, enc.max_tokens
    target = min(max(n, lo), hi)
    for d in range(hi - lo + 1):
        for cand in (target - d, target + d) if d else (target,):
            if lo <= cand <= hi:
                for size in enc._sizes(cand):
                    if max_aspect is None or _aspect(size) <= max_aspect:
                        return ImageFit(size[0], size[1], cand, n)
    raise ValueError(f"{enc.name}: no image of aspect ratio at most {max_aspect} reaches "
                     f"any count in [{lo}, {hi}]")


@dataclass(frozen=True, eq=True)
class FixedEncoder(VisionEncoder):
    """Every image becomes one ``side``×``side`` crop: a constant token count (LLaVA-1.5's
    CLIPImageProcessor resizes the short side to 336 and center-crops 336×336; the processor
    expands ``<image>`` to ``(336 // 14) ** 2`` tokens, the CLS token dropped)."""

    name: str
    side: int = 336
    patch: int = 14
    extra_tokens: int = 0

    def features(self, width: int, height: int) -> int:
        return (self.side // self.patch) ** 2

    def _sizes(self, tokens: int) -> list[tuple[int, int]]:
        return [(self.side, self.side)] if tokens == self.min_tokens else []

    @property
    def min_tokens(self) -> int:
        return self.features(self.side, self.side) + self.extra_tokens

    @property
    def max_tokens(self) -> int:
        return self.min_tokens


def qwen_smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                      max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """Qwen2-VL's ``smart_resize`` (transformers ``image_processing_qwen2_vl.py``): both sides
    to multiples of ``factor``, the area within ``[min_pixels, max_pixels]``, the aspect ratio
    kept as well as it can be. Returns ``(height, width)``."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image {width}x{height}: Qwen2-VL refuses aspect ratios above 200")
    h_bar = round(height / factor) * factor  # Python round, as the processor: half to even
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True, eq=True)
class QwenVLEncoder(VisionEncoder):
    """Qwen2-VL / Qwen2.5-VL dynamic resolution: one token per ``(patch*merge)²`` pixels of the
    smart-resized image, plus ``<|vision_start|>`` and ``<|vision_end|>``. The pixel bounds are
    the released checkpoints' ``preprocessor_config.json`` values (3136 = 4 tokens and
    12845056 = 16384 tokens), not the processor class defaults."""

    name: str
    patch: int = 14
    merge: int = 2
    min_pixels: int = 3136
    max_pixels: int = 12845056
    max_ratio: int = 200
    extra_tokens: int = 2

    @property
    def factor(self) -> int:
        return self.patch * self.merge

    def features(self, width: int, height: int) -> int:
        h, w = qwen_smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return (h // self.factor) * (w // self.factor)

    @property
    def min_tokens(self) -> int:
        return -(-self.min_pixels // self.factor**2) + self.extra_tokens

    @property
    def max_tokens(self) -> int:
        return self.max_pixels // self.factor**2 + self.extra_tokens

    def _sizes(self, tokens: int) -> list[tuple[int, int]]:
        k = tokens - self.extra_tokens
        if not self.min_tokens - self.extra_tokens <= k <= self.max_tokens - self.extra_tokens:
            return []
        # k = rows × cols of 28-px cells; the divisor nearest sqrt(k) gives the squarest image,
        # and if even that is too lopsided, every other split is more so
        rows = max(r for r in range(1, math.isqrt(k) + 1) if k % r == 0)
        cols, f = k // rows, self.factor
        # exact multiples of 28 px; past the 200:1 limit, sides that still round to the same
        # cells (13 px short on the long side, 13 px over on the short one) may stay under it
        for size in ((cols * f, rows * f), (cols * f - f // 2 + 1, rows * f + f // 2 - 1)):
            if _aspect(size) <= self.max_ratio and self.features(*size) == k:
                return [size]
        return []


@dataclass(frozen=True, eq=True)
class AnyResEncoder(VisionEncoder):
    """LLaVA-NeXT "anyres" with ``spatial_unpad`` (transformers ``LlavaNextProcessor.
    _get_number_of_features``, the same in vLLM's ``LlavaNextProcessingInfo``): the pinpoint
    chosen by ``select_best_resolution``, ``tile // patch`` features per tile side, padding
    rows/columns of the letterboxed grid removed, one newline feature per remaining row, plus the
    base image's ``(tile // patch)²`` features. ``pinpoints`` are ``(height, width)``."""

    name: str
    pinpoints: tuple[tuple[int, int], ...] = ((336, 672), (672, 336), (672, 672), (1008, 336),
                                              (336, 1008))
    tile: int = 336
    patch: int = 14
    extra_tokens: int = 0

    def best_resolution(self, width: int, height: int) -> tuple[int, int]:
        """transformers ``select_best_resolution``: the most effective pixels, then the least
        waste; first in list order on a tie. Returns ``(height, width)``."""
        best = self.pinpoints[0]
        max_effective, min_wasted = 0, float("inf")
        for ph, pw in self.pinpoints:
            scale = min(pw / width, ph / height)
            down_w, down_h = int(width * scale), int(height * scale)
            effective = min(down_w * down_h, width * height)
            wasted = pw * ph - effective
            if effective > max_effective or (effective == max_effective and wasted < min_wasted):
                max_effective, min_wasted, best = effective, wasted, (ph, pw)
        return best

    def features(self, width: int, height: int) -> int:
        ph, pw = self.best_resolution(width, height)
        side = self.tile // self.patch
        cur_h, cur_w = side * (ph // self.tile), side * (pw // self.tile)
        if width / height > cur_w / cur_h:
            new_h = int(round(height * (cur_w / width), 7))
            cur_h -= 2 * ((cur_h - new_h) // 2)
        else:
            new_w = int(round(width * (cur_h / height), 7))
            cur_w -= 2 * ((cur_w - new_w) // 2)
        return cur_h * cur_w + cur_h + side * side

    @cached_property
    def _table(self) -> dict[int, list[tuple[int, int]]]:
        """Every count this encoder reaches, with its images: a pinpoint's own size first (no
        letterbox), then the squarest, then the smallest. Candidates:
        each pinpoint at its own size, and letterboxed crops of it whose kept rows (columns)
        fall half a feature away from a rounding edge (so float and integer versions of the
        rule agree); each is checked with :meth:`features`."""
        side, p = self.tile // self.patch, self.patch
        cands: list[tuple[int, int]] = []
        for ph, pw in self.pinpoints:
            rows, cols = side * (ph // self.tile), side * (pw // self.tile)
            cands.append((pw, ph))
            cands += [(pw, p * r + p // 2) for r in range(2, rows, 2)]  # wide: r rows kept
            cands += [(p * c + p // 2, ph) for c in range(2, cols, 2)]  # tall: c columns kept
        table: dict[int, list[tuple[int, int]]] = {}
        for w, h in dict.fromkeys(cands):  # pinpoints sharing a side give the same crops
            table.setdefault(self.features(w, h) + self.extra_tokens, []).append((w, h))
        native = {(pw, ph) for ph, pw in self.pinpoints}
        for sizes in table.values():
            sizes.sort(key=lambda s: (s not in native, _aspect(s), s[0] * s[1]))
        return table

    @property
    def min_tokens(self) -> int:
        return min(self._table)

    @property
    def max_tokens(self) -> int:
        return max(self._table)

    def _sizes(self, tokens: int) -> list[tuple[int, int]]:
        return self._table.get(tokens, [])


@dataclass(frozen=True, eq=True)
class InternVLEncoder(VisionEncoder):
    """InternVL dynamic tiling (``dynamic_preprocess`` of the model cards; vLLM's
    ``calculate_internvl_targets``): the grid (cols, rows) with cols×rows in
    ``[min_num, max_num]`` whose aspect ratio is closest to the image's (on a tie, a larger grid
    wins only when the image covers more than half of it), one ``image_size`` tile per cell, a
    thumbnail tile when there is more than one, ``(image_size // patch)² × downsample²`` tokens
    per tile, plus ``<img>`` and ``</img>``."""

    name: str
    image_size: int = 448
    patch: int = 14
    downsample: float = 0.5
    min_num: int = 1
    max_num: int = 12
    use_thumbnail: bool = True
    extra_tokens: int = 2

    @property
    def tile_tokens(self) -> int:
        return int((self.image_size // self.patch) ** 2 * self.downsample**2)

    @cached_property
    def _ratios(self) -> list[tuple[int, int]]:
        # built exactly as the reference builds it, so ties are visited in the same order
        ratios = {(i, j) for n in range(self.min_num, self.max_num + 1)
                  for i in range(1, n + 1) for j in range(1, n + 1)
                  if self.min_num <= i * j <= self.max_num}
        return sorted(ratios, key=lambda x: x[0] * x[1])

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """``(cols, rows)`` of tiles for an image (``find_closest_aspect_ratio``)."""
        aspect = width / height
        best_diff, best = float("inf"), (1, 1)
        area = width * height
        for ratio in self._ratios:
            diff = abs(aspect - ratio[0] / ratio[1])
            if diff < best_diff:
                best_diff, best = diff, ratio
            elif diff == best_diff and area > 0.5 * self.image_size**2 * ratio[0] * ratio[1]:
                best = ratio
        return best

    def tiles(self, width: int, height: int) -> int:
        cols, rows = self.grid(width, height)
        blocks = cols * rows
        return blocks + 1 if self.use_thumbnail and blocks != 1 else blocks

    def features(self, width: int, height: int) -> int:
        return self.tiles(width, height) * self.tile_tokens

    @property
    def min_tokens(self) -> int:
        return self.min_num * self.tile_tokens + self.extra_tokens

    @property
    def max_tokens(self) -> int:
        thumb = 1 if self.use_thumbnail and self.max_num > 1 else 0
        return (self.max_num + thumb) * self.tile_tokens + self.extra_tokens

    def _sizes(self, tokens: int) -> list[tuple[int, int]]:
        k = tokens - self.extra_tokens
        if k % self.tile_tokens:
            return []
        tiles = k // self.tile_tokens
        blocks = tiles - 1 if self.use_thumbnail and tiles > 1 else tiles
        if (blocks == 1 and tiles != 1) or not self.min_num <= blocks <= self.max_num:
            return []  # e.g. two tiles: one block never gets a thumbnail
        rows = max(r for r in range(1, math.isqrt(blocks) + 1) if blocks % r == 0)
        size = (blocks // rows * self.image_size, rows * self.image_size)  # landscape, native
        return [size] if self.features(*size) == k else []


@dataclass(frozen=True, eq=True)
class PixtralEncoder(VisionEncoder):
    """Pixtral (mistral_common ``ImageEncoder``): images larger than ``max_size`` scaled down,
    then one ``[IMG]`` per ``patch × merge`` px cell and one ``[IMG_BREAK]`` per row, the last
    one ``[IMG_END]``: rows × (cols + 1) tokens."""

    name: str
    patch: int = 16
    max_size: int = 1024
    merge: int = 1
    extra_tokens: int = 0

    @property
    def cell(self) -> int:
        return self.patch * self.merge

    def grid(self, width: int, height: int) -> tuple[int, int]:
        w: float = width
        h: float = height
        ratio = max(h / self.max_size, w / self.max_size)
        if ratio > 1:
            w, h = round(w / ratio), round(h / ratio)
        return int((w - 1) // self.cell + 1), int((h - 1) // self.cell + 1)

    def features(self, width: int, height: int) -> int:
        cols, rows = self.grid(width, height)
        return rows * (cols + 1)

    @property
    def _side(self) -> int:
        return self.max_size // self.cell

    @property
    def min_tokens(self) -> int:
        return 2 + self.extra_tokens

    @property
    def max_tokens(self) -> int:
        return self._side * (self._side + 1) + self.extra_tokens

    def _sizes(self, tokens: int) -> list[tuple[int, int]]:
        k = tokens - self.extra_tokens
        best: tuple[int, int] | None = None
        for rows in range(1, self._side + 1):  # k = rows × (cols + 1); squarest wins
            if k % rows == 0 and 1 <= k // rows - 1 <= self._side:
                cols = k // rows - 1
                if best is None or abs(cols - rows) < abs(best[0] - best[1]):
                    best = (cols, rows)
        if best is None:
            return []
        size = (best[0] * self.cell, best[1] * self.cell)
        return [size] if self.features(*size) == k else []


# -- the registry ---------------------------------------------------------------------------

ENCODERS: dict[str, VisionEncoder] = {
    "llava-1.5": FixedEncoder("llava-1.5"),
    "llava-next": AnyResEncoder("llava-next"),
    "qwen2-vl": QwenVLEncoder("qwen2-vl"),
    "qwen2.5-vl": QwenVLEncoder("qwen2.5-vl"),
    "internvl": InternVLEncoder("internvl"),
    "pixtral": PixtralEncoder("pixtral"),
}

ALIASES: dict[str, str] = {
    "clip-vit-l-14-336": "llava-1.5", "llava-v1.5": "llava-1.5", "llava-v1.6": "llava-next",
    "llava-1.6": "llava-next", "qwen2_5-vl": "qwen2.5-vl", "qwen25-vl": "qwen2.5-vl",
    "internvl2": "internvl", "internvl2.5": "internvl", "internvl2_5": "internvl",
    "internvl3": "internvl", "pixtral-12b": "pixtral",
}

# Hugging Face model ids -> encoder (checked in order: Qwen2.5 before Qwen2)
_MODEL_IDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), name) for p, name in (
        (r"qwen2[._]5-vl", "qwen2.5-vl"),
        (r"qwen2-vl", "qwen2-vl"),
        (r"llava-(v1\.6|next)", "llava-next"),
        (r"llava-(v)?1\.5", "llava-1.5"),
        (r"internvl(2|2[._]5|3)-", "internvl"),
        (r"pixtral-12b", "pixtral"),
    ))


def resolve_encoder(name: str | VisionEncoder) -> VisionEncoder:
    """An encoder by name (``ENCODERS``, ``ALIASES``) or by a Hugging Face model id it serves
    (``Qwen/Qwen2.5-VL-7B-Instruct``); unknown names raise :class:`UserError`."""
    if isinstance(name, VisionEncoder):
        return name
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in ENCODERS:
        return ENCODERS[key]
    for pattern, enc in _MODEL_IDS:
        if pattern.search(key.rsplit("/", 1)[-1] + "-"):
            return ENCODERS[enc]
    names = {**{k: k for k in ENCODERS}, **{a: a for a in ALIASES}}
    raise UserError(f"image encoder '{name}' is unknown; {did_you_mean(key, names)}"
                    f"known: {', '.join(ENCODERS)}")


# -- pixels ---------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def make_image(width: int, height: int, seed: int | str, *, block: int = 4,
               level: int = 1) -> bytes:
    """An RGB PNG of random ``block``×``block`` colour cells, a function of ``seed`` alone.

    The cells come from SHAKE-128 of the seed (stable across numpy versions), so two seeds give
    different pixels and a server's image cache cannot merge them. Cells keep it fast: a cell
    row's first scanline is stored as is, the others with PNG's Up filter (all zeros), so a
    1024×1024 image is ~250 KB (about a compressed photo's size) and takes ~10 ms."""
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height}: both sides must be at least 1 px")
    bw, bh = -(-width // block), -(-height // block)
    rnd = hashlib.shake_128(f"slobench-image\x00{seed}".encode()).digest(bw * bh * 3)
    cells = np.frombuffer(rnd, dtype=np.uint8).reshape(bh, bw, 3)
    firsts = np.repeat(cells, block, axis=1)[:, :width, :].reshape(bh, width * 3)
    raw = np.zeros((height, 1 + width * 3), dtype=np.uint8)
    raw[:, 0] = 2  # Up: a scanline equal to the one above is stored as zeros
    raw[::block, 0] = 0
    raw[::block, 1:] = firsts
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _chunk(b"IEND", b""))


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class ImageCache:
    """Data URLs by (width, height, seed), least recently used out first, bounded in entries
    and in characters (big images are few but large)."""

    def __init__(self, max_items: int = 512, max_chars: int = 64 << 20) -> None:
        self.max_items = max_items
        self.max_chars = max_chars
        self.chars = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[int, int, int | str], str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def url(self, width: int, height: int, seed: int | str) -> str:
        key = (int(width), int(height), seed)
        url = self._items.get(key)
        if url is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return url
        self.misses += 1
        url = data_url(make_image(width, height, seed))
        self._items[key] = url
        self.chars += len(url)
        while self._items and (len(self._items) > self.max_items
                               or self.chars > self.max_chars):
            self.chars -= len(self._items.popitem(last=False)[1])
        return url


# -- content parts --------------------------------------------------------------------------


@dataclass
class ImageParts:
    """OpenAI chat content parts for one user message, and what the images cost."""

    parts: list[dict[str, Any]]
    fits: list[ImageFit]

    @property
    def image_tokens(self) -> list[int]:
        return [f.tokens for f in self.fits]

    @property
    def tokens(self) -> int:
        """Prompt tokens of all the images: the text gets ``input_tokens`` less these (and the
        template's own tokens)."""
        return sum(f.tokens for f in self.fits)


def _image_seed(nonce: str, seed: int | str, index: int) -> int:
    key = f"{nonce}\x00img\x00{seed}\x00{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def image_content_parts(text: str, image_tokens: Sequence[int], encoder: str | VisionEncoder,
                        seed: int | str, *, nonce: str = "", distinct: int | None = None,
                        max_aspect: float | None = None,
                        cache: ImageCache | None = None) -> ImageParts:
    """One ``image_url`` part per entry of ``image_tokens`` (a PNG data URL sized by
    ``encoder``, see :meth:`VisionEncoder.fit` for ``max_aspect``), then the ``text`` part
    (left out when ``text`` is empty). ``.tokens`` of the result is what the images really
    cost.

    Image ``i`` is drawn from a hash of (``nonce``, ``seed``, ``i``): unique per request when
    ``seed`` is the request id, and per run when ``nonce`` is the run id. ``distinct``: at most
    this many different images per size and nonce, to model images that recur across requests
    (a server's image cache then works as it would in production)."""
    enc = resolve_encoder(encoder)
    if distinct is not None and distinct < 1:
        raise ValueError("distinct must be at least 1")
    cache = cache if cache is not None else ImageCache()
    parts: list[dict[str, Any]] = []
    fits: list[ImageFit] = []
    for i, n in enumerate(image_tokens):
        fit = enc.fit(int(n), max_aspect)
        s = _image_seed(nonce, seed, i)
        if distinct is not None:  # the bucket, still salted by the nonce: no reuse across runs
            s = _image_seed(nonce, "\x00bucket", s % distinct)
        parts.append({"type": "image_url",
                      "image_url": {"url": cache.url(fit.width, fit.height, s)}})
        fits.append(fit)
    if text:
        parts.append({"type": "text", "text": text})
    return ImageParts(parts, fits)


@dataclass
class ImagePrompter:
    """What the runner holds per run: an encoder, a nonce (the run id, so a second run does not
    hit the images the first one left in a server's cache) and one image cache.

    >>> p = ImagePrompter("qwen2.5-vl", nonce="run-1")
    >>> p.parts("Describe the picture.", [258], seed="req-7").tokens
    258
    """

    encoder: str | VisionEncoder
    nonce: str = ""
    distinct: int | None = None
    max_aspect: float | None = None
    cache: ImageCache = field(default_factory=ImageCache)

    def __post_init__(self) -> None:
        self.encoder = resolve_encoder(self.encoder)  # unknown names fail at once, not mid-run

    def fits(self, image_tokens: Sequence[int]) -> list[ImageFit]:
        enc = resolve_encoder(self.encoder)
        return [enc.fit(int(n), self.max_aspect) for n in image_tokens]

    def cost(self, image_tokens: Sequence[int]) -> int:
        """Prompt tokens the images of ``image_tokens`` really cost (no pixels drawn)."""
        return sum(f.tokens for f in self.fits(image_tokens))

    def parts(self, text: str, image_tokens: Sequence[int], seed: int | str) -> ImageParts:
        return image_content_parts(text, image_tokens, self.encoder, seed, nonce=self.nonce,
                                   distinct=self.distinct, max_aspect=self.max_aspect,
                                   cache=self.cache)

