"""``catalens bench hostile``: status, wall time and peak memory of hostile photos through the serving path.

Prints JSON, one entry per input of a fixed corpus generated in code (the same bytes on every run): thin strips of a
few hundred bytes, a 1×1 pixel, a fully transparent PNG, decompression-bomb headers, a truncated JPEG, 16-bit and
float TIFFs, an animated GIF, a CMYK JPEG, an EXIF-rotated JPEG and an ordinary photo for reference.

Each input runs in a fresh interpreter, so its memory is its own: the child loads the serving model, warms up on a
small photo, then decodes, preprocesses and embeds the input exactly as ingest and search do. ``added_rss_mib`` is
the growth of the resident set over its size just before the work (Linux resets the high-water mark through
``/proc/self/clear_refs``; elsewhere it is measured against ``ru_maxrss``, which the warm-up may already exceed);
``peak_rss_mib`` is the child's whole high-water mark, model included. Memory is measured here and bounded in tests
(``tests/unit/test_imaging.py``); time is only reported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catalens_tools.cli import group

# ---------------------------------------------------------------------------------------------------------------
# The corpus


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, rows: bytes | None) -> bytes:
    """An 8-bit RGB PNG written by hand; ``rows=None`` leaves the header alone with a token IDAT (a bomb header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(rows if rows is not None else bytes(16), 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _grey_strip(width: int, height: int) -> bytes:
    """A mid-grey strip: every scanline is a filter byte then grey pixels, so zlib squeezes it to ~100 bytes."""
    return _png(width, height, (b"\x00" + b"\x80" * (3 * width)) * height)


def _save(image: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _photo(width: int, height: int, seed: int = 1) -> Any:
    from PIL import Image

    from catalens_tools.commands.bench_embed import bench_photo

    return Image.open(io.BytesIO(bench_photo(width, height, seed))).convert("RGB")


def _normal() -> bytes:
    from catalens_tools.commands.bench_embed import bench_photo

    return bench_photo(1600, 1200, seed=1)


def _transparent() -> bytes:
    from PIL import Image

    return _save(Image.new("RGBA", (640, 480), (20, 120, 200, 0)), "PNG")


def _jpeg_header(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) declares another size."""
    data = bytearray(_save(_photo(64, 48), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _truncated_jpeg() -> bytes:
    data = _save(_photo(1024, 768), "JPEG", quality=90)
    return data[: len(data) // 2]


def _tiff(mode: str) -> bytes:
    import numpy as np
    from PIL import Image

    grey = np.asarray(_photo(640, 480).convert("L"), dtype=np.float32)
    if mode == "I;16":
        return _save(Image.fromarray((grey * 257).astype(np.uint16)), "TIFF")  # mode I;16
    return _save(Image.fromarray(grey / 255.0), "TIFF")  # mode F, values 0..1


def _animated_gif() -> bytes:
    from PIL import Image

    frames = [_photo(320, 240, seed=s).convert("P", palette=Image.Palette.ADAPTIVE) for s in (1, 2, 3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _cmyk_jpeg() -> bytes:
    return _save(_photo(640, 480).convert("CMYK"), "JPEG", quality=90)


def _exif_rotated_jpeg() -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return _save(_photo(1200, 900).transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif.tobytes())


CORPUS: dict[str, Callable[[], bytes]] = {
    "photo-1600x1200.jpg (reference)": _normal,
    "strip-20000x1.png": lambda: _grey_strip(20000, 1),
    "strip-1x20000.png": lambda: _grey_strip(1, 20000),
    "strip-60000x1.png": lambda: _grey_strip(60000, 1),
    "strip-1x60000.png": lambda: _grey_strip(1, 60000),
    "strip-60000x32.png": lambda: _grey_strip(60000, 32),
    "strip-32x60000.png": lambda: _grey_strip(32, 60000),
    "pixel-1x1.png": lambda: _grey_strip(1, 1),
    "transparent-640x480.png": _transparent,
    "bomb-header-30000x30000.png": lambda: _png(30000, 30000, None),
    "bomb-header-1x50000000.png": lambda: _png(1, 50_000_000, None),
    "bomb-header-60000x60000.jpg": lambda: _jpeg_header(60000, 60000),
    "truncated-1024x768.jpg": _truncated_jpeg,
    "grey16-640x480.tiff": lambda: _tiff("I;16"),
    "float-640x480.tiff": lambda: _tiff("F"),
    "animated-320x240.gif": _animated_gif,
    "cmyk-640x480.jpg": _cmyk_jpeg,
    "exif-rotated-1200x900.jpg": _exif_rotated_jpeg,
}


# ---------------------------------------------------------------------------------------------------------------
# One input, in a child process


def _rss_kib() -> tuple[int, int] | None:
    """(current, peak) resident set in KiB from /proc, or ``None`` off Linux."""
    try:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as reset:
            reset.write("5")
        return True
    except OSError:
        return False


def child_main(argv: list[str] | None = None) -> None:
    """Run one input through the serving path and print one JSON line (the parent's measurement)."""
    args = argv if argv is not None else sys.argv[1:]
    path, model_dir, variant = args[0], args[1], args[2]

    from catalens.imaging import PreprocessConfig, load_and_preprocess
    from catalens_tools.commands.bench_embed import bench_photo

    if model_dir:
        from catalens.embedder import Embedder

        embedder = Embedder.from_dir(Path(model_dir), variant)
        config = embedder.card.preprocess

        def work(data: bytes) -> None:
            embedder.embed(load_and_preprocess(data, config)[None])
    else:
        config = PreprocessConfig(size=260, resize_short=297)

        def work(data: bytes) -> None:
            load_and_preprocess(data, config)

    work(bench_photo(400, 300, seed=0))  # warm-up: first allocations of Pillow, numpy and onnxruntime
    data = Path(path).read_bytes()
    exact = _reset_peak()
    start = _rss_kib()
    start_kib = start[0] if start and exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        work(data)
        status = "ok"
    except Exception as exc:  # the point of the bench: anything but a typed error shows up by name
        status = getattr(exc, "code", None) or type(exc).__name__
    wall_ms = (time.perf_counter() - started) * 1000
    end = _rss_kib()
    peak_kib = end[1] if end else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ever_kib = max(peak_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(
        json.dumps(
            {
                "status": status,
                "wall_ms": round(wall_ms, 1),
                "added_rss_mib": round(max(0, peak_kib - start_kib) / 1024, 1),
                "peak_rss_mib": round(ever_kib / 1024, 1),
                "exact": exact,
            }
        )
    )


def run_input(
    data: bytes, *, model_dir: Path | None, variant: str = "fp32", timeout: float = 120, memory_limit_mib: int = 0
) -> dict[str, Any]:
    """Measure one input in a fresh interpreter; a child killed by the OS or the clock is reported, not raised."""
    with tempfile.TemporaryDirectory(prefix="catalens-hostile-") as tmp:
        path = Path(tmp) / "input"
        path.write_bytes(data)
        code = "from catalens_tools.commands.bench_hostile import child_main; child_main()"
        limit = memory_limit_mib * 2**20

        def cap() -> None:  # an address-space cap stands in for a Lambda's memory size
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        try:
            done = subprocess.run(
                [sys.executable, "-c", code, str(path), str(model_dir or ""), variant],
                capture_output=True,
                text=True,
                timeout=timeout,
                preexec_fn=cap if memory_limit_mib else None,
                env=os.environ.copy(),
            )
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "wall_ms": round(timeout * 1000)}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"status": f"crashed: {tail[:200]}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------------------
# The command


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    commands = group(sub, groups, "bench", "benchmarks (print JSON)")
    parser = commands.add_parser(
        "hostile",
        help="status, wall ms and peak memory of hostile photos (strips, bombs, 1x1, ...) through the serving path",
        description="Runs each input of a fixed corpus of hostile photos through decode + preprocess + embed with "
        "the serving model, each in its own process, and prints status (ok or the error code), wall time and peak "
        "memory per input.",
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="built models (default: Settings.model_dir)")
    parser.add_argument("--variant", default="fp32", choices=["fp32", "int8"])
    parser.add_argument("--no-model", action="store_true", help="decode + preprocess only (no onnxruntime)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="inputs whose name contains NAME")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per input before it counts as hung")
    parser.add_argument(
        "--memory-limit-mib",
        type=int,
        default=0,
        help="cap each child's address space (0: none); emulates a Lambda's memory size",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from catalens.embedder import find_card
    from catalens.settings import load_settings

    model_dir = None if args.no_model else (args.model_dir or load_settings().model_dir)
    names = [n for n in CORPUS if not args.only or any(part in n for part in args.only)]
    results = []
    for name in names:
        data = CORPUS[name]()
        measured = run_input(
            data,
            model_dir=model_dir,
            variant=args.variant,
            timeout=args.timeout,
            memory_limit_mib=args.memory_limit_mib,
        )
        results.append({"input": name, "bytes": len(data), **measured})
        print(f"{name}: {measured.get('status')}", file=sys.stderr)
    added = [r["added_rss_mib"] for r in results if "added_rss_mib" in r]
    report = {
        "path": "decode + preprocess" + ("" if model_dir is None else " + embed"),
        "model": None if model_dir is None else find_card(Path(model_dir), args.variant).name,
        "variant": None if model_dir is None else args.variant,
        "memory_limit_mib": args.memory_limit_mib or None,
        "inputs": results,
        "max_added_rss_mib": max(added) if added else None,
        "notes": "added_rss_mib = peak growth of the child's resident set during this input's work (high-water mark "
        "reset just before it); peak_rss_mib = the child's whole peak, model and imports included",
    }
    print(json.dumps(report, indent=2))
    return 0
