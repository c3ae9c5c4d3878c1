"""Qwen video: container headers, frame sampling, token counts and the scan.

Oracles, and what each proves:

- **Container metadata** (``vlmcheck.data.videos``): real MP4/MOV/AVI files written by PyAV (its own
  ffmpeg), read back by PyAV as the oracle: frames (packets demuxed, nothing decoded), the average
  frame rate, the coded size, and the display rotation of the first decoded frame.
- **Frame sampling, qwen-vl-utils route**: qwen-vl-utils' own ``smart_nframes`` and ``smart_resize``
  (``vision_process.py``), called for real. The module imports torchvision at the top for its decoders
  only; as in ``test_oracle_qwen_vl_utils.py``, an empty stand-in lets it import and is removed at once.
- **Frame sampling and resize, processor route**: transformers' video processors need torchvision to be
  built or run, and there is no CPU torchvision here. Their ``sample_frames`` / ``smart_resize`` /
  ``get_num_of_video_patches`` are plain Python (numpy/torch), so they are called for real on an
  instance made without ``__init__`` (same stand-in for the import of ``video_processing_qwen2_vl``).
  The pipeline around them (which size and frame count they are given) is read from the source, and
  the token counts are golden values worked out by hand below, arithmetic in the comments.
- **Qwen3-VL text**: transformers' own ``Qwen3VLProcessor.replace_video_token`` (timestamps,
  wrappers) and ``get_text_with_replacements``, tokenized by the real Qwen2 tokenizer, on the grid and
  frame indices above: the per-sample totals of the scan must equal that ``input_ids`` length.
"""

from __future__ import annotations

import fractions
import struct
from pathlib import Path
from typing import Any

import pytest

av = pytest.importorskip("av")
np = pytest.importorskip("numpy")

from vlmcheck.data.videos import VideoInfo, VideoProblem, probe_video_bytes, probe_video_path  # noqa: E402


# -- writing real files with PyAV ---------------------------------------------------------------------
def write_video(path: Path, width: int, height: int, rate: Any, frames: int, *, codec: str = "mpeg4",
                fmt: str | None = None, movflags: str | None = None, rotation: int | None = None) -> Path:
    """Encode ``frames`` flat frames; only the container headers matter to what is tested."""
    options = {"movflags": movflags} if movflags else {}
    with av.open(str(path), "w", format=fmt, options=options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 90, np.uint8), format="rgb24")
        for _ in range(frames):
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def pyav_truth(path: Path) -> dict[str, Any]:
    """What ffmpeg (through PyAV) says about the first video stream, decoding one frame at most."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        truth = {"width": stream.codec_context.width, "height": stream.codec_context.height,
                 "fps": float(stream.average_rate)}
        truth["frames"] = sum(1 for packet in container.demux(stream) if packet.size)
    with av.open(str(path)) as container:
        truth["rotation"] = int(next(container.decode(video=0)).rotation) % 360
    return truth


CASES = [
    # (name, width, height, rate, frames, write options)
    ("a.mp4", 640, 360, 30, 60, {}),
    ("b.mp4", 320, 240, fractions.Fraction(30000, 1001), 100, {}),
    ("c.mp4", 160, 96, 24, 37, {}),
    ("d.mp4", 96, 160, 25, 1, {}),
    ("e.mp4", 1280, 720, fractions.Fraction(24000, 1001), 9, {}),
    ("x264.mp4", 352, 288, 25, 40, {"codec": "libx264"}),  # B-frames: ctts and an edit list
    ("fast.mp4", 200, 120, 30, 45, {"movflags": "faststart"}),  # moov before mdat
    ("frag.mp4", 160, 120, 25, 60, {"movflags": "frag_keyframe+empty_moov"}),  # samples in moof/trun
    ("frag30.mp4", 320, 180, fractions.Fraction(30000, 1001), 50,
     {"movflags": "frag_keyframe+empty_moov+default_base_moof", "codec": "libx264"}),
    ("clip.mov", 240, 160, 30, 31, {}),
    ("clip.avi", 160, 120, 25, 50, {}),
    ("clip24.avi", 320, 176, 24, 13, {}),
    ("rot90.mp4", 320, 180, 30, 12, {"rotation": 90}),
    ("rot180.mp4", 320, 180, 30, 12, {"rotation": 180}),
    ("rot270.mp4", 320, 180, 30, 12, {"rotation": -90}),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for name, w, h, rate, n, options in CASES:
        write_video(folder / name, w, h, rate, n, **options)
    return folder


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_header_metadata_equals_pyav(videos: Path, case: tuple[Any, ...]) -> None:
    name = case[0]
    info = probe_video_path(videos / name)
    truth = pyav_truth(videos / name)
    assert (info.width, info.height, info.frames) == (truth["width"], truth["height"], truth["frames"])
    assert info.fps == truth["fps"]
    assert info.rotation == truth["rotation"]
    assert info.duration == pytest.approx(info.frames / info.fps)
    upright = truth["rotation"] % 180 == 0  # torchcodec decodes to the display size
    assert info.size() == ((truth["width"], truth["height"]) if upright else (truth["height"], truth["width"]))
    assert info.size(apply_rotation=False) == (truth["width"], truth["height"])
    assert probe_video_bytes((videos / name).read_bytes()) == info


def test_64_bit_box_sizes(videos: Path, tmp_path: Path) -> None:
    """Rewrite every top-level box with a 64-bit size (size=1 + largesize), as writers do for an mdat
    over 4 GiB; ffmpeg and the reader must still agree."""
    data = (videos / "a.mp4").read_bytes()
    out, pos, shift, before_data = bytearray(), 0, 0, True
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        out += struct.pack(">I4sQ", 1, kind, size + 8) + data[pos + 8:pos + size]
        if before_data:
            shift += 8  # every box up to and including mdat pushes the media data 8 bytes on
            before_data = kind != b"mdat"
        pos += size
    stco = out.find(b"stco")  # chunk offsets are absolute: move them with the data
    for i in range(struct.unpack_from(">I", out, stco + 8)[0]):
        at = stco + 12 + 4 * i
        struct.pack_into(">I", out, at, struct.unpack_from(">I", out, at)[0] + shift)
    path = tmp_path / "large.mp4"
    path.write_bytes(bytes(out))
    truth = pyav_truth(path)
    info = probe_video_path(path)
    assert (info.width, info.height, info.frames, info.fps) == (
        truth["width"], truth["height"], truth["frames"], truth["fps"])


@pytest.mark.parametrize(("name", "keep", "code"), [
    ("a.mp4", 0.5, "VC113"),  # moov at the end: never arrived
    ("fast.mp4", 0.6, "VC113"),  # moov first, mdat cut
    ("clip.avi", 0.5, "VC113"),
    ("a.mp4", 0.0, "VC112"),  # empty file
])
def test_truncated_files_are_findings(videos: Path, tmp_path: Path, name: str, keep: float, code: str) -> None:
    data = (videos / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(VideoProblem) as problem:
        probe_video_path(path)
    assert problem.value.code == code
    if keep:  # ffmpeg cannot read them whole either: it raises, or finds fewer frames
        with pytest.raises(Exception):  # noqa: B017
            truth = pyav_truth(path)
            assert truth["frames"] == probe_video_path(videos / name).frames


def test_other_problems(videos: Path, tmp_path: Path) -> None:
    with pytest.raises(VideoProblem) as missing:
        probe_video_path(tmp_path / "nope.mp4")
    assert missing.value.code == "VC111"
    (tmp_path / "notes.mp4").write_text("not a video at all, just text")
    with pytest.raises(VideoProblem) as text:
        probe_video_path(tmp_path / "notes.mp4")
    assert text.value.code == "VC112"
    webm = write_video(tmp_path / "a.webm", 160, 120, 25, 5, codec="libvpx-vp9")
    mkv = write_video(tmp_path / "a.mkv", 160, 120, 25, 5)
    for path in (webm, mkv):
        with pytest.raises(VideoProblem) as unsupported:
            probe_video_path(path)
        assert unsupported.value.code == "VC114"
    audio = tmp_path / "audio.mp4"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    with pytest.raises(VideoProblem) as no_video:
        probe_video_path(audio)
    assert no_video.value.code == "VC112" and "no video track" in no_video.value.message
    corrupt = bytearray((videos / "fast.mp4").read_bytes())
    at = corrupt.find(b"stts")
    corrupt[at - 4:at] = struct.pack(">I", 0xFFFFFF)  # a box larger than its parent
    with pytest.raises(VideoProblem) as broken:
        probe_video_bytes(bytes(corrupt))
    assert broken.value.code == "VC112"


def test_video_info_size() -> None:
    assert VideoInfo(640, 360, 10, 30.0, 1 / 3, rotation=90).size() == (360, 640)
    assert VideoInfo(640, 360, 10, 30.0, 1 / 3, rotation=180).size() == (640, 360)

