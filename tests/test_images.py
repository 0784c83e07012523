"""Images sized to image-token counts: the token rules of each vision encoder against examples
worked out by hand from the reference code (docs/prompts.md, "Images"), round trips
``tokens(*size_for(n)) == n`` over each encoder's whole range, PNGs decoded back with zlib +
struct (and Pillow when it happens to be installed), and the chat content parts."""

from __future__ import annotations

import ast
import base64
import bisect
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from slobench.errors import UserError
from slobench.prompts.images import (
    ENCODERS,
    AnyResEncoder,
    ImageCache,
    ImagePrompter,
    InternVLEncoder,
    PixtralEncoder,
    QwenVLEncoder,
    data_url,
    image_content_parts,
    make_image,
    qwen_smart_resize,
    resolve_encoder,
)

# -- a small PNG reader (the test must not trust the writer) ----------------------------------


def read_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB, non-interlaced PNG: check the signature and every chunk's CRC,
    undo the five scanline filters, return an (height, width, 3) uint8 array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * 3
    assert len(raw) == height * (stride + 1)
    out = np.zeros((height, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, dtype=np.int32)
        if ftype in (0, 2):  # None and Up need no left neighbour: whole row at once
            out[y] = prev = (line + (prev if ftype == 2 else 0)) & 0xFF
            continue
        for x in range(stride):
            a = cur[x - 3] if x >= 3 else 0
            b = prev[x]
            c = prev[x - 3] if x >= 3 else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                assert ftype == 4, ftype
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (line[x] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return out.astype(np.uint8).reshape(height, width, 3)


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (37, 23), (64, 64)])
def test_png_decodes_with_zlib_and_struct(size):
    w, h = size
    png = make_image(w, h, seed=7)
    pixels = read_png(png)
    assert pixels.shape == (h, w, 3)
    if w * h > 16:
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1  # noise, not a flat colour


def test_png_is_deterministic_and_unique_per_seed():
    a, b, c = make_image(48, 40, 1), make_image(48, 40, 1), make_image(48, 40, 2)
    assert a == b
    assert a != c
    pa, pc = read_png(a), read_png(c)
    assert (pa != pc).any(axis=2).mean() > 0.9  # different almost everywhere, not one pixel
    assert make_image(48, 40, "req-1") != make_image(48, 40, "req-2")


def test_png_decodes_with_pillow_when_installed():
    Image = pytest.importorskip("PIL.Image")
    import io

    png = make_image(300, 200, seed=3)
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.size == (300, 200) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), read_png(png))


def test_large_png_is_compact():
    png = make_image(1024, 1024, seed=0)
    assert 50_000 < len(png) < 1_000_000  # about a compressed photo's size, not 3 MB raw
    assert struct.unpack(">II", png[16:24]) == (1024, 1024)


def test_data_url_round_trips():
    png = make_image(8, 8, 0)
    url = data_url(png)
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png


# -- token rules: hand-worked examples ------------------------------------------------------


def test_llava15_is_fixed():
    enc = ENCODERS["llava-1.5"]
    # CLIP ViT-L/14 at 336 px: (336 // 14) ** 2 = 576 patches, CLS dropped ("default")
    for size in [(336, 336), (1024, 768), (50, 2000)]:
        assert enc.tokens(*size) == 576
    assert enc.size_for(576) == (336, 336)
    fit = enc.fit(1000)
    assert (fit.tokens, fit.exact) == (576, False)


def test_qwen_smart_resize_examples():
    # 1024x768: 768/28 = 27.43 -> 27 (756 px), 1024/28 = 36.57 -> 37 (1036 px)
    assert qwen_smart_resize(768, 1024, 28, 3136, 12845056) == (756, 1036)
    # 28x28 is 784 px < 3136: beta = 2, ceil(56 / 28) = 2 cells a side -> 56x56
    assert qwen_smart_resize(28, 28, 28, 3136, 12845056) == (56, 56)
    # 8000x6000 rounds to 5992x8008 > 12845056 px: beta = sqrt(4.8e7 / 12845056) = 1.9331,
    # floor(6000 / 1.9331 / 28) = 110, floor(8000 / 1.9331 / 28) = 147
    assert qwen_smart_resize(6000, 8000, 28, 3136, 12845056) == (3080, 4116)
    # the processor class default max_pixels (28*28*1280) is lower than the checkpoints'
    assert qwen_smart_resize(768, 1024) == (756, 1036)
    h, w = qwen_smart_resize(3000, 4000)
    assert h * w <= 28 * 28 * 1280 and h % 28 == 0 and w % 28 == 0
    with pytest.raises(ValueError, match="200"):
        qwen_smart_resize(28, 28 * 201)


def test_qwen_tokens():
    enc = ENCODERS["qwen2.5-vl"]
    assert enc.tokens(448, 448) == 16 * 16 + 2  # + <|vision_start|> <|vision_end|>
    assert enc.tokens(1024, 768) == 27 * 37 + 2
    assert enc.tokens(8000, 6000) == 110 * 147 + 2
    assert enc.tokens(28, 28) == 4 + 2  # scaled up to min_pixels
    assert (enc.min_tokens, enc.max_tokens) == (6, 16386)
    assert enc.size_for(258) == (448, 448)
    assert enc.size_for(2 + 12) == (112, 84)  # 12 = 3 x 4 cells, landscape
    assert enc.size_for(2 + 199) == (199 * 28, 28)  # prime: one row of 199 cells, 200:1 is ok
    # 211 (prime) as 1 x 211 cells breaks 200:1 at 28 px; 41 x 5895 px rounds to the same cells
    assert enc.size_for(2 + 211) == (5895, 41)
    assert enc.tokens(5895, 41) == 213
    # 307 is prime and too long even so: the closest count, the lower one first
    fit = enc.fit(2 + 307)
    assert (fit.tokens, fit.exact) == (2 + 306, False)
    assert enc.fit(3).tokens == 6 and enc.fit(10**6).tokens == 16386  # clamped


def test_qwen_max_aspect_prefers_natural_shapes():
    enc = ENCODERS["qwen2-vl"]
    assert enc.fit(2 + 211).exact
    fit = enc.fit(2 + 211, max_aspect=4)
    assert fit.tokens == 2 + 210 and max(fit.size) / min(fit.size) <= 4  # 14 x 15 cells
    with pytest.raises(ValueError):
        enc.fit(100, max_aspect=0.5)


def test_llava_next_examples():
    enc = ENCODERS["llava-next"]
    # pinpoints (h, w) of llava-v1.6: 336x672 fits 672x336 (w x h) exactly: 1 x 2 tiles,
    # 24 x 48 features, no padding: 24*48 + 24 newlines + 576 base
    assert enc.best_resolution(672, 336) == (336, 672)
    assert enc.tokens(672, 336) == 24 * 48 + 24 + 576 == 1752
    assert enc.tokens(336, 672) == 48 * 24 + 48 + 576 == 1776  # 2 x 1 tiles
    assert enc.tokens(672, 672) == 48 * 48 + 48 + 576 == 2928
    # 800x600: 672x672 keeps the most pixels (scale 0.84: 672x504); 2 x 2 tiles = 48 x 48;
    # wider than the grid: new_h = 600 * 48 / 800 = 36, padding (48 - 36) // 2 = 6 a side
    assert enc.best_resolution(800, 600) == (672, 672)
    assert enc.tokens(800, 600) == 36 * 48 + 36 + 576 == 2340
    # small images: every pinpoint keeps all pixels; the least waste, first in list: 1 x 2
    assert enc.best_resolution(100, 300) == (336, 672)
    # 100 wide x 300 tall on 24 x 48: new_w = 100 * 24 / 300 = 8, padding 20 a side -> 8 cols
    assert enc.tokens(100, 300) == 24 * 8 + 24 + 576


def test_llava_next_fits():
    enc = ENCODERS["llava-next"]
    assert enc.size_for(1752) == (672, 336)
    assert enc.size_for(2928) == (672, 672)
    assert enc.tokens(*enc.size_for(2340)) == 2340
    # 576 needs a sliver under a feature row (< 14 px): out of range, like anything below 648
    assert enc.min_tokens == 648 and not enc.reachable(576)
    # counts between the reachable steps go to the nearest one
    fit = enc.fit(1000)
    assert not fit.exact and enc.tokens(*fit.size) == fit.tokens
    assert abs(fit.tokens - 1000) == min(abs(n - 1000) for n in enc._table)


def test_internvl_examples():
    enc = ENCODERS["internvl"]
    assert enc.tile_tokens == 256  # (448 // 14) ** 2 * 0.5 ** 2
    assert enc.tokens(448, 448) == 256 + 2  # one tile, no thumbnail, + <img> </img>
    assert enc.grid(896, 448) == (2, 1)  # (4, 2) ties on ratio but the image covers < half
    assert enc.tokens(896, 448) == 3 * 256 + 2  # 2 tiles + thumbnail
    # 1000x1000: ratio 1 ties (1,1), (2,2), (3,3); each larger grid wins while the image area
    # exceeds half of it: 1e6 > 0.5 * 448^2 * 9 = 903168 -> 3 x 3 tiles + thumbnail
    assert enc.grid(1000, 1000) == (3, 3)
    assert enc.tokens(1000, 1000) == 10 * 256 + 2
    assert enc.grid(800, 600) == (4, 3)  # 4:3 exactly, 12 tiles
    assert enc.tokens(800, 600) == 13 * 256 + 2 == enc.max_tokens
    reach = [n for n in range(enc.min_tokens, enc.max_tokens + 1) if enc.reachable(n)]
    assert reach == [258] + [256 * (t + 1) + 2 for t in range(2, 13)]
    assert enc.size_for(5 * 256 + 2) == (896, 896)  # 4 tiles as 2 x 2, native 448 px tiles
    assert enc.size_for(8 * 256 + 2) == (448 * 7, 448)  # 7 is prime: 7 x 1
    assert enc.fit(2 * 256 + 2).tokens == 258  # 2 tiles cannot happen; tie -> the lower


def test_pixtral_examples():
    enc = ENCODERS["pixtral"]
    assert enc.tokens(1024, 1024) == 64 * 65  # 64 rows of 64 [IMG] + [IMG_BREAK]/[IMG_END]
    assert enc.tokens(2048, 1024) == 32 * 65  # scaled to 1024x512
    assert enc.tokens(100, 50) == 4 * (7 + 1)  # ceil(50/16) rows, ceil(100/16) cols
    assert enc.size_for(4 * 5) in [(64, 64)]  # 4 rows x (4 + 1)
    assert enc.tokens(*enc.size_for(2)) == 2  # 16x16: one [IMG] and [IMG_END]
    assert not enc.reachable(67 * 1)  # prime 67: rows 1 needs 66 cols > 64


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_round_trip_over_the_whole_range(name):
    """tokens(*size_for(n)) == n wherever n is reachable, else the closest count; every chosen
    image is within the model's limits and at least 16 px a side."""
    enc = ENCODERS[name]
    reachable = []
    for n in range(enc.min_tokens, enc.max_tokens + 1):
        fit = enc.fit(n)
        assert enc.tokens(fit.width, fit.height) == fit.tokens
        assert min(fit.size) >= 16
        if fit.exact:
            reachable.append(n)
    assert reachable
    for n in range(enc.min_tokens, enc.max_tokens + 1):
        fit = enc.fit(n)
        i = bisect.bisect_left(reachable, n)
        nearest = min(abs(m - n) for m in reachable[max(i - 1, 0):i + 1])
        assert abs(fit.tokens - n) == nearest  # nothing reachable is closer


def test_round_trip_counts():
    """How much of each range is reachable (documented in docs/prompts.md)."""
    counts = {name: sum(enc.reachable(n) for n in range(enc.min_tokens, enc.max_tokens + 1))
              for name, enc in ENCODERS.items()}
    assert counts["llava-1.5"] == 1
    assert counts["internvl"] == 12
    assert counts["llava-next"] == 116
    assert counts["qwen2-vl"] == counts["qwen2.5-vl"] == 11983
    assert counts["pixtral"] == 1297


def test_custom_encoder_parameters():
    small = QwenVLEncoder("qwen-small", min_pixels=256 * 28 * 28, max_pixels=1280 * 28 * 28)
    assert small.min_tokens == 258 and small.max_tokens == 1282
    assert small.tokens(28, 28) == 256 + 2  # scaled up: beta = 16, 16 x 16 cells
    assert InternVLEncoder("iv6", max_num=6).max_tokens == 7 * 256 + 2
    assert PixtralEncoder("px", patch=14, max_size=1540, merge=2).tokens(1540, 1540) == 55 * 56
    onevision_like = AnyResEncoder("any", pinpoints=((336, 336), (336, 672), (672, 336)))
    assert onevision_like.tokens(336, 336) == 24 * 24 + 24 + 576


# -- registry -------------------------------------------------------------------------------


def test_resolve_encoder():
    assert resolve_encoder("Qwen2.5-VL") is ENCODERS["qwen2.5-vl"]
    assert resolve_encoder("internvl2.5") is ENCODERS["internvl"]
    assert resolve_encoder("Qwen/Qwen2.5-VL-7B-Instruct") is ENCODERS["qwen2.5-vl"]
    assert resolve_encoder("Qwen/Qwen2-VL-2B-Instruct") is ENCODERS["qwen2-vl"]
    assert resolve_encoder("llava-hf/llava-v1.6-mistral-7b-hf") is ENCODERS["llava-next"]
    assert resolve_encoder("llava-hf/llava-1.5-7b-hf") is ENCODERS["llava-1.5"]
    assert resolve_encoder("OpenGVLab/InternVL2_5-8B") is ENCODERS["internvl"]
    assert resolve_encoder("mistralai/Pixtral-12B-2409") is ENCODERS["pixtral"]
    enc = ENCODERS["pixtral"]
    assert resolve_encoder(enc) is enc


def test_unknown_encoder_says_did_you_mean():
    with pytest.raises(UserError, match="did you mean 'qwen2-vl'"):
        resolve_encoder("qwen2-v1")
    with pytest.raises(UserError, match=r"known: llava-1\.5"):
        resolve_encoder("gpt-4o")
    with pytest.raises(UserError):
        ImagePrompter("nope")


# -- content parts --------------------------------------------------------------------------


def png_size(url: str) -> tuple[int, int]:
    png = base64.b64decode(url.split(",", 1)[1])
    return struct.unpack(">II", png[16:24])


def test_content_parts_shape_and_cost():
    out = image_content_parts("Describe both.", [258, 1000 + 2], "qwen2-vl", seed="r1")
    assert [p["type"] for p in out.parts] == ["image_url", "image_url", "text"]
    assert out.parts[-1] == {"type": "text", "text": "Describe both."}
    assert out.image_tokens == [258, 1000 + 2] and out.tokens == 1260
    enc = ENCODERS["qwen2-vl"]
    for part, n in zip(out.parts[:2], out.image_tokens, strict=True):
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        assert enc.tokens(*png_size(url)) == n
    pixels = read_png(base64.b64decode(out.parts[0]["image_url"]["url"].split(",", 1)[1]))
    assert pixels.shape == (448, 448, 3)


def test_content_parts_report_the_real_cost():
    out = image_content_parts("", [600], "internvl", seed=1)
    assert [p["type"] for p in out.parts] == ["image_url"]  # empty text is left out
    assert out.tokens == 770 and not out.fits[0].exact and out.fits[0].requested == 600


def test_images_unique_per_request_and_run_deterministic():
    p1 = ImagePrompter("qwen2.5-vl", nonce="run-a")
    a = p1.parts("x", [258, 258], seed="req-1")
    b = p1.parts("x", [258, 258], seed="req-2")
    urls_a = [p["image_url"]["url"] for p in a.parts[:2]]
    urls_b = [p["image_url"]["url"] for p in b.parts[:2]]
    assert len(set(urls_a + urls_b)) == 4  # two images of one request differ too
    again = ImagePrompter("qwen2.5-vl", nonce="run-a").parts("x", [258, 258], seed="req-1")
    assert [p["image_url"]["url"] for p in again.parts[:2]] == urls_a
    other_run = ImagePrompter("qwen2.5-vl", nonce="run-b").parts("x", [258, 258], seed="req-1")
    assert not set(p["image_url"]["url"] for p in other_run.parts[:2]) & set(urls_a)


def test_distinct_limits_the_number_of_images():
    p = ImagePrompter("llava-1.5", nonce="n", distinct=3)
    urls = {p.parts("", [576], seed=i).parts[0]["image_url"]["url"] for i in range(60)}
    assert len(urls) == 3
    assert p.cache.misses == 3 and p.cache.hits == 57
    q = ImagePrompter("llava-1.5", nonce="other", distinct=3)
    urls_q = {q.parts("", [576], seed=i).parts[0]["image_url"]["url"] for i in range(60)}
    assert not urls & urls_q  # buckets are salted by the nonce
    with pytest.raises(ValueError):
        image_content_parts("", [576], "llava-1.5", seed=0, distinct=0)


def test_cache_is_bounded():
    cache = ImageCache(max_items=4)
    for s in range(10):
        cache.url(32, 32, s)
    assert len(cache) == 4 and cache.misses == 10
    cache.url(32, 32, 9)
    assert cache.hits == 1
    small = ImageCache(max_items=100, max_chars=3 * len(data_url(make_image(64, 64, 0))) + 10)
    for s in range(10):
        small.url(64, 64, s)
    assert len(small) == 3 and small.chars <= small.max_chars


def test_prompter_cost_without_pixels():
    p = ImagePrompter("pixtral")
    assert p.cost([4160, 20]) == 4180
    assert [f.size for f in p.fits([20])] == [(64, 64)]
    assert len(p.cache) == 0


def test_prompts_layer_imports_nothing_above_it():
    src = Path(__file__).parents[1] / "src" / "slobench" / "prompts" / "images.py"
    tree = ast.parse(src.read_text(encoding="utf-8"))
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    banned = ("slobench.client", "slobench.engine", "slobench.cli", "slobench.report")
    assert not [m for m in mods if m.startswith(banned)]
