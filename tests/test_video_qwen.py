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

import copy
import fractions
import json
import shutil
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
                 "fps": float(stream.average_rate), "declared_frames": stream.frames,
                 "duration": None if stream.duration is None else float(stream.duration * stream.time_base)}
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
    # what LLaMA-Factory samples by: PyAV's stream.frames (0 for a fragmented MP4) and stream duration, exactly
    assert (info.declared_frames, info.duration) == (truth["declared_frames"], truth["duration"])
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



# -- the real sampling / resize code -------------------------------------------------------------------
import importlib.util  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.image_utils import SizeDict  # noqa: E402
from transformers.video_utils import VideoMetadata  # noqa: E402

from realparts import qwen_processor  # noqa: E402
from vlmcheck import scan  # noqa: E402
from vlmcheck.demo.checkpoints import qwen_checkpoint  # noqa: E402
from vlmcheck.families import Overrides, get_family  # noqa: E402
from vlmcheck.families.qwen2_vl import (  # noqa: E402
    linspace_round,
    qwen2_video_plan,
    torch_linspace_round,
)
from vlmcheck.families.qwen3_vl import qwen3_video_plan  # noqa: E402


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """Empty modules under torchvision's names, only so that files importing it at the top can be
    imported; nothing of torchvision runs (there is no CPU torchvision here)."""
    names = ["torchvision", "torchvision.io", "torchvision.transforms", "torchvision.transforms.v2",
             "torchvision.transforms.v2.functional", "torchvision.transforms.functional"]
    modules = {name: types.ModuleType(name) for name in names}
    for name, module in modules.items():
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(modules[parent], child, module)
    modules["torchvision"].__version__ = "0.0"  # type: ignore[attr-defined]
    modules["torchvision.transforms"].InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")  # type: ignore[attr-defined]
    return modules


def _import_file(relative: str, name: str, *, stand_in: bool) -> types.ModuleType:
    """Import one transformers source file as a module of its package (the lazy ``transformers``
    module hides video processors when torchvision is missing)."""
    path = Path(transformers.__file__).parent / relative
    package = "transformers." + relative.rpartition("/")[0].replace("/", ".")
    added = _torchvision_stand_in() if stand_in and "torchvision" not in sys.modules else {}
    sys.modules.update(added)
    try:
        spec = importlib.util.spec_from_file_location(f"{package}.{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        module.__package__ = package
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        for key in added:
            sys.modules.pop(key, None)
    return module


@pytest.fixture(scope="module")
def video_processors() -> dict[str, type]:
    """transformers' Qwen2VLVideoProcessor and Qwen3VLVideoProcessor classes, each subclassed once so
    that the last step of ``resize`` (the pixel interpolation, torchvision) returns zeros of the
    target size: everything that decides the size, the frames and the grid is their own code."""
    q2 = _import_file("models/qwen2_vl/video_processing_qwen2_vl.py", "video_processing_qwen2_vl_oracle", stand_in=True)
    q3 = _import_file("models/qwen3_vl/video_processing_qwen3_vl.py", "video_processing_qwen3_vl_oracle", stand_in=True)
    from transformers.video_processing_utils import BaseVideoProcessor

    class PixelsOnly(BaseVideoProcessor):  # sits between the Qwen class and BaseVideoProcessor in the MRO
        def resize(self, image: Any, size: Any, resample: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
            return torch.zeros((*image.shape[:-2], size.height, size.width), dtype=torch.uint8)

    return {
        "qwen2_vl": type("Qwen2VLVideoOracle", (q2.Qwen2VLVideoProcessor, PixelsOnly), {}),
        "qwen3_vl": type("Qwen3VLVideoOracle", (q3.Qwen3VLVideoProcessor, PixelsOnly), {}),
    }


def processor_instance(cls: type, config: dict[str, Any]) -> Any:
    """An instance with the attributes ``BaseVideoProcessor.__init__`` would set from ``config`` (its
    __init__ refuses to run without torchvision): class defaults, then the config's values."""
    proc = object.__new__(cls)
    for key in cls.valid_kwargs.__annotations__:
        setattr(proc, key, getattr(cls, key, None))
    size = dict(config.get("size") or cls.size)
    if "min_pixels" in config:  # Qwen2VLVideoProcessor.__init__ maps these onto size
        size["shortest_edge"] = config["min_pixels"]
    if "max_pixels" in config:
        size["longest_edge"] = config["max_pixels"]
    for key, value in config.items():
        if key not in ("size", "min_pixels", "max_pixels"):
            setattr(proc, key, value)
    proc.size = SizeDict(**size)
    return proc


def processor_grid(proc: Any, info: VideoInfo, *, frames: Any = None) -> tuple[list[int], tuple[int, int, int]]:
    """The video processor's path for one video: ``sample_frames`` when ``do_sample_frames`` (with the
    kwargs ``preprocess`` passes it), else every frame, then ``resize`` and ``patchify`` on zeros of
    the frame size. Returns the frame indices and (grid_t, grid_h, grid_w)."""
    width, height = info.size()
    metadata = VideoMetadata(total_num_frames=info.frames, fps=info.fps, width=width, height=height)
    if frames is not None:
        indices = list(frames)
    elif proc.do_sample_frames:
        kwargs = {k: getattr(proc, k, None) for k in proc.valid_kwargs.__annotations__}
        for k in ("size", "do_convert_rgb", "video_metadata", "device", "input_data_format", "do_sample_frames",
                  "return_metadata", "data_format"):
            kwargs.pop(k, None)
        indices = [int(i) for i in proc.sample_frames(metadata, **kwargs)]
    else:
        indices = list(range(info.frames))
    video = torch.zeros((1, 1, 1, 1, 1), dtype=torch.uint8).expand(1, len(indices), 3, height, width)
    factor = proc.patch_size * proc.merge_size
    resized = proc.resize(video, size=proc.size, resample=None, factor=factor, temporal_factor=proc.temporal_patch_size,
                          cap_pixels_per_frame=bool(proc.cap_pixels_per_frame))
    if resized.numel() > 16_000_000:  # patchify's grid is padded T // tps, H' // p, W' // p; spare the memory
        t, h, w = resized.shape[1], resized.shape[-2], resized.shape[-1]
        return indices, (-(-t // proc.temporal_patch_size), h // proc.patch_size, w // proc.patch_size)
    _, grid_t, grid_h, grid_w = proc.patchify(resized.contiguous(), proc.patch_size, proc.merge_size,
                                              proc.temporal_patch_size)
    return indices, (int(grid_t), int(grid_h), int(grid_w))


def settings_for(model_type: str, video_config: dict[str, Any], extra: dict[str, Any] | None = None,
                 resize: str = "processor") -> Any:
    preprocessor = {"video_preprocessor_config": video_config, "processor_config": {}}
    return get_family(model_type).settings(preprocessor=preprocessor, config={},
                                           overrides=Overrides(resize=resize, extra=extra or {}))


# Hub video configs: Qwen/Qwen3-VL-8B-Instruct video_preprocessor_config.json; Qwen2-VL/2.5-VL have none
# (transformers then builds the video processor from preprocessor_config.json's values).
QWEN3_HUB_VIDEO = {"size": {"shortest_edge": 4096, "longest_edge": 25165824}, "patch_size": 16,
                   "temporal_patch_size": 2, "merge_size": 2, "do_sample_frames": True, "fps": 2,
                   "min_frames": 4, "max_frames": 768}
QWEN2_HUB = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
             "merge_size": 2}

METAS = [  # (frames, fps, width, height): clips as the header reader returns them
    (300, 30.0, 640, 360), (299, 30000 / 1001, 640, 360), (250, 25.0, 1280, 720), (1, 30.0, 320, 240),
    (3, 24.0, 320, 240), (7, 25.0, 100, 60), (1800, 30.0, 1920, 1080), (45, 30.0, 24, 1000),
    (61, 24000 / 1001, 480, 854), (10, 30.0, 2000, 9), (120, 60.0, 3840, 2160), (17, 12.5, 50, 50),
]
CONFIGS = [  # (model_type, video config, call-time kwargs as Overrides.extra)
    ("qwen2_vl", QWEN2_HUB, {}),
    ("qwen2_vl", QWEN2_HUB, {"do_sample_frames": True, "fps": 2}),
    ("qwen2_vl", QWEN2_HUB, {"do_sample_frames": True, "fps": 1.5, "cap_pixels_per_frame": True}),
    ("qwen2_vl", {}, {"do_sample_frames": True, "num_frames": 9}),
    ("qwen2_vl", {"min_pixels": 128 * 28 * 28, "max_pixels": 768 * 28 * 28}, {"do_sample_frames": True, "fps": 4,
                                                                              "max_frames": 64}),
    ("qwen3_vl", QWEN3_HUB_VIDEO, {}),
    ("qwen3_vl", QWEN3_HUB_VIDEO, {"cap_pixels_per_frame": True}),
    ("qwen3_vl", QWEN3_HUB_VIDEO, {"fps": 1}),
    ("qwen3_vl", {}, {}),
    ("qwen3_vl", QWEN3_HUB_VIDEO, {"do_sample_frames": False}),
]


@pytest.mark.parametrize(("model_type", "config", "extra"), CONFIGS)
def test_processor_route_grid_equals_the_video_processors_own_code(video_processors, model_type, config, extra) -> None:
    """vlmcheck's frames and grid vs transformers' sample_frames, resize (cap included) and patchify,
    on clips of every shape: long, 1 frame, odd frame counts, tiny and extreme-aspect frames."""
    settings = settings_for(model_type, config, extra).video
    proc = processor_instance(video_processors[model_type], {**config, **extra})
    plan_of = qwen3_video_plan if model_type == "qwen3_vl" else qwen2_video_plan
    for frames, fps, width, height in METAS:
        info = VideoInfo(width, height, frames, fps, frames / fps)
        try:
            expected = processor_grid(proc, info)
        except (ValueError, ZeroDivisionError) as error:  # the processor raises: vlmcheck says VC115
            with pytest.raises(VideoProblem) as problem:
                plan_of(info, settings, {})
            assert problem.value.code == "VC115", (info, error)
            continue
        plan = plan_of(info, settings, {})
        assert (plan.grid_t, plan.grid_h, plan.grid_w) == expected[1], (model_type, extra, info)
        if model_type == "qwen3_vl":
            assert list(plan.indices) == expected[0]
        elif settings.do_sample_frames:
            assert -(-len(expected[0]) // 2) == plan.grid_t


def test_get_num_of_video_patches_agrees(video_processors) -> None:
    """transformers' own count helper for the same (frames, height, width) (it skips Qwen2-VL's cap)."""
    for model_type, config in (("qwen2_vl", QWEN2_HUB), ("qwen3_vl", QWEN3_HUB_VIDEO)):
        proc = processor_instance(video_processors[model_type], config)
        settings = settings_for(model_type, config, {"do_sample_frames": False}).video
        plan_of = qwen3_video_plan if model_type == "qwen3_vl" else qwen2_video_plan
        for frames, fps, width, height in METAS:
            if frames < 2 or max(width, height) / min(width, height) > 200:
                continue
            plan = plan_of(VideoInfo(width, height, frames, fps, None), settings, {})
            patches = proc.get_num_of_video_patches(frames, height, width, {})
            assert plan.grid_t * plan.grid_h * plan.grid_w == patches


def test_linspace_helpers_equal_numpy_and_torch() -> None:
    for total in (1, 2, 3, 7, 29, 30, 299, 300, 1799, 7201):
        for n in {1, 2, 3, 4, 5, 20, 21, 64, min(total, 768)}:
            assert linspace_round(0, total - 1, n) == np.linspace(0, total - 1, n).round().astype(int).tolist()
            for start in (0, 3, 17):
                if start < total:
                    want = torch.linspace(start, total - 1, n).round().long().tolist()
                    assert torch_linspace_round(start, total - 1, n) == want, (start, total, n)


# -- golden values, worked out by hand ------------------------------------------------------------------
def test_golden_counts_by_hand() -> None:
    """Each family, each route, on a 10 s 30 fps clip (300 frames), 640x360 and 1920x1080."""
    clip = VideoInfo(640, 360, 300, 30.0, 10.0)
    full_hd = VideoInfo(1920, 1080, 300, 30.0, 10.0)
    qwen2_fps2 = {"do_sample_frames": True, "fps": 2}

    def count(model_type: str, info: VideoInfo, config: dict[str, Any], extra: dict[str, Any], resize: str) -> int:
        settings = settings_for(model_type, config, extra, resize)
        return get_family(model_type).expand_video(info, settings, {}).features

    for model_type in ("qwen2_vl", "qwen2_5_vl"):  # Qwen2.5-VL's processor uses Qwen2VLVideoProcessor
        # processor, fps=2: 300 / 30 * 2 = 20 frames (arange(0, 300, 15.0): 20); 360 -> round(12.86) * 28 = 364,
        # 640 -> round(22.86) * 28 = 644, 364 * 644 = 234,416 within [3,136, 12,845,056];
        # grid 20 / 2 = 10 x 364 / 14 = 26 x 644 / 14 = 46 = 11,960 patches / 2**2 = 2,990 tokens
        assert count(model_type, clip, QWEN2_HUB, qwen2_fps2, "processor") == 2990
        # processor as the checkpoint ships it (do_sample_frames False): all 300 frames, grid_t 150:
        # 150 * 26 * 46 / 4 = 44,850
        assert count(model_type, clip, QWEN2_HUB, {}, "processor") == 44850
        # qwen-vl-utils: smart_nframes 300 / 30 * 2 = 20 (min 4, max floor(min(768, 300) / 2) * 2 = 300);
        # per-frame budget max(min(768 * 28**2 = 602,112, 128000 * 28**2 * 0.9 / 20 * 2 = 9,031,680),
        # int(128 * 28**2 * 1.05) = 105,369) = 602,112 >= 234,416: 364 x 644 again, then the processor
        # keeps it: 2,990
        assert count(model_type, clip, QWEN2_HUB, {}, "qwen-vl-utils") == 2990
        # 1920x1080, processor fps=2: 1080 -> round(38.57) * 28 = 1,092, 1920 -> round(68.57) * 28 = 1,932,
        # 2,109,744 <= 12,845,056; 10 x 78 x 138 / 4 = 26,910
        assert count(model_type, full_hd, QWEN2_HUB, qwen2_fps2, "processor") == 26910
        # 1920x1080, qwen-vl-utils: 1,092 * 1,932 > 602,112, beta = sqrt(1920 * 1080 / 602,112) = 1.8558,
        # floor(1080 / 1.8558 / 28) * 28 = 20 * 28 = 560, floor(1920 / 1.8558 / 28) * 28 = 36 * 28 = 1,008;
        # 10 x 40 x 72 / 4 = 7,200
        assert count(model_type, full_hd, QWEN2_HUB, {}, "qwen-vl-utils") == 7200
    # Qwen3-VL, hub video config (fps 2, size 4,096..25,165,824, factor 32): int(300 / 30 * 2) = 20 frames;
    # 3-D resize: 360 -> round(11.25) * 32 = 352, 640 -> 20 * 32 = 640, 20 * 352 * 640 = 4,505,600 within
    # the budget; 10 groups of 22 x 40 / 4 = 220 tokens = 2,200
    assert count("qwen3_vl", clip, QWEN3_HUB_VIDEO, {}, "processor") == 2200
    # qwen-vl-utils (patch 16): budget max(min(768 * 32**2 = 786,432, ...), ...) = 786,432 >= 352 * 640:
    # the same 2,200
    assert count("qwen3_vl", clip, QWEN3_HUB_VIDEO, {}, "qwen-vl-utils") == 2200
    # 1920x1080 processor: 20 * 1,088 * 1,920 = 41,779,200 > 25,165,824, beta = sqrt(20 * 1080 * 1920 /
    # 25,165,824) = 1.28372, floor(1080 / 1.28372 / 32) * 32 = 832, floor(1920 / 1.28372 / 32) * 32 = 1,472;
    # 10 x (52 x 92 / 4 = 1,196) = 11,960
    assert count("qwen3_vl", full_hd, QWEN3_HUB_VIDEO, {}, "processor") == 11960
    # 1920x1080 qwen-vl-utils: 1,088 * 1,920 > 786,432, beta = sqrt(1920 * 1080 / 786,432) = 1.62380,
    # 640 x 1,152; the processor's 3-D check 20 * 640 * 1,152 = 14,745,600 passes: 10 x (40 x 72 / 4) = 7,200
    assert count("qwen3_vl", full_hd, QWEN3_HUB_VIDEO, {}, "qwen-vl-utils") == 7200
    # Qwen3-VL's text: frames linspace(0, 299, 20).round() = 0, 16, 31, 47, ..., 283, 299; groups (0, 16),
    # (31, 47), ...: (0 / 30 + 16 / 30) / 2 = 0.267 -> "0.3", (31 + 47) / 60 = 1.3, (63 + 79) / 60 = 2.367
    # -> "2.4", 3.4, 4.467 -> "4.5", 5.5, 6.567 -> "6.6", 7.6, 8.667 -> "8.7", (283 + 299) / 60 = 9.7
    settings = settings_for("qwen3_vl", QWEN3_HUB_VIDEO, {})
    text = get_family("qwen3_vl").expand_video(clip, settings, {}).text
    stamps = ["0.3", "1.3", "2.4", "3.4", "4.5", "5.5", "6.6", "7.6", "8.7", "9.7"]
    assert text == "".join(f"<{t} seconds><|vision_start|><|video_pad|><|vision_end|>" for t in stamps)
    # Too few frames: Qwen3-VL samples min(max(int(1 / 30 * 2), 4), 768, 1) = 1 frame and raises in smart_resize;
    # Qwen2-VL at fps 2 gets max_frames floor(min(768, 1) / 2) * 2 = 0 frames and divides by zero
    for model_type, config, extra in (("qwen3_vl", QWEN3_HUB_VIDEO, {}), ("qwen2_vl", QWEN2_HUB, qwen2_fps2)):
        with pytest.raises(VideoProblem) as problem:
            get_family(model_type).expand_video(VideoInfo(64, 64, 1, 30.0, 1 / 30),
                                                settings_for(model_type, config, extra), {})
        assert problem.value.code == "VC115"


# -- qwen-vl-utils, called for real -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def vision_process() -> Any:
    """qwen-vl-utils' ``vision_process`` with one more video reader, "pyav": the decord reader's steps
    (its own ``calculate_video_frame_range``, ``smart_nframes`` and ``torch.linspace``) on frames PyAV
    decodes. ``fetch_video``'s final pixel resize (torchvision) returns zeros of the size it computed."""
    module = sys.modules.get("qwen_vl_utils.vision_process")
    if module is None:
        added = _torchvision_stand_in() if "torchvision" not in sys.modules else {}
        sys.modules.update(added)
        try:
            from qwen_vl_utils import vision_process as module
        finally:
            for key in added:
                sys.modules.pop(key, None)

    def read_video_pyav(ele: dict[str, Any]) -> Any:
        with av.open(ele["video"]) as container:
            stream = container.streams.video[0]
            video_fps = float(stream.average_rate)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        start, end, total = module.calculate_video_frame_range(ele, len(frames), video_fps)
        nframes = module.smart_nframes(ele, total_frames=total, video_fps=video_fps)
        idx = torch.linspace(start, end, nframes).round().long().tolist()
        video = torch.tensor(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2)
        metadata = {"fps": video_fps, "frames_indices": idx, "total_num_frames": total, "video_backend": "pyav"}
        return video, metadata, nframes / max(total, 1e-6) * video_fps

    def resize(video: Any, size: list[int], **kwargs: Any) -> Any:
        return torch.zeros((video.shape[0], video.shape[1], *size), dtype=torch.uint8)

    saved = (module.transforms, module.InterpolationMode, module.FORCE_QWENVL_VIDEO_READER)
    module.transforms = types.SimpleNamespace(functional=types.SimpleNamespace(resize=resize))
    module.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")
    module.VIDEO_READER_BACKENDS["pyav"] = read_video_pyav
    module.FORCE_QWENVL_VIDEO_READER = "pyav"
    module.get_video_reader_backend.cache_clear()
    yield module
    module.transforms, module.InterpolationMode, module.FORCE_QWENVL_VIDEO_READER = saved
    module.VIDEO_READER_BACKENDS.pop("pyav", None)
    module.get_video_reader_backend.cache_clear()


UTILS_OPTIONS = [
    {}, {"fps": 1}, {"fps": 7.5}, {"nframes": 6}, {"nframes": 7}, {"max_pixels": 50000}, {"min_pixels": 200000},
    {"video_start": 0.5, "video_end": 1.5}, {"total_pixels": 2_000_000}, {"resized_height": 200, "resized_width": 300},
    {"max_frames": 8, "fps": 10}, {"min_frames": 30},
]


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl"])
def test_qwen_vl_utils_route_equals_fetch_video(videos, vision_process, video_processors, model_type) -> None:
    """Frames, frame indices and size from qwen-vl-utils' own ``process_vision_info`` on the real files,
    then the video processor's own grid on those frames (``do_sample_frames=False``), vs vlmcheck."""
    patch = 16 if model_type == "qwen3_vl" else 14
    config = QWEN3_HUB_VIDEO if model_type == "qwen3_vl" else QWEN2_HUB
    settings = settings_for(model_type, config, {}, "qwen-vl-utils").video
    proc = processor_instance(video_processors[model_type], {**config, "do_sample_frames": False})
    plan_of = qwen3_video_plan if model_type == "qwen3_vl" else qwen2_video_plan
    checked = 0
    for name in ("a.mp4", "b.mp4", "c.mp4", "e.mp4", "x264.mp4", "frag.mp4", "clip.mov", "clip.avi"):
        info = probe_video_path(videos / name)
        for options in UTILS_OPTIONS:
            part = {"type": "video", "video": str(videos / name), **options}
            try:
                _, out, _ = vision_process.process_vision_info([[{"role": "user", "content": [part]}]],
                                                              return_video_kwargs=True, return_video_metadata=True,
                                                              image_patch_size=patch)
            except (ValueError, AssertionError, AttributeError):  # AttributeError: the reader raised and
                # fetch_video fell back to its torchvision reader, absent here
                with pytest.raises(VideoProblem) as problem:
                    plan_of(info, settings, options)
                assert problem.value.code == "VC115", (name, options)
                continue
            video, metadata = out[0]
            frames, height, width = video.shape[0], video.shape[-2], video.shape[-1]
            resized = VideoInfo(width, height, frames, info.fps, None)
            _, grid = processor_grid(proc, resized, frames=metadata["frames_indices"])
            plan = plan_of(info, settings, options)
            assert list(plan.indices) == metadata["frames_indices"], (name, options)
            assert (plan.grid_t, plan.grid_h, plan.grid_w) == grid, (name, options)
            checked += 1
    assert checked >= 60


# -- the scan: images and videos mixed, per-sample totals vs the real processor's text ------------------------
def video_checkpoint(model_type: str, folder: Path) -> Path:
    """The offline Qwen checkpoint plus the hub's video processor config (Qwen3-VL ships one; Qwen2-VL
    and Qwen2.5-VL do not, and transformers reads preprocessor_config.json instead)."""
    dest = folder / model_type
    if not dest.exists():
        shutil.copytree(qwen_checkpoint(model_type), dest)
        if model_type == "qwen3_vl":
            (dest / "video_preprocessor_config.json").write_text(json.dumps(QWEN3_HUB_VIDEO))
    return dest


def processor_ids(model_type: str, messages: list[dict[str, Any]], images: list[Any], videos: list[Path],
                  video_processors: dict[str, type], extra: dict[str, Any]) -> list[int]:
    """``input_ids`` as transformers' processor builds them: its chat template, its image processor and
    ``replace_image_token``, the video processor's own frames and grid (``processor_grid``) and
    ``replace_video_token`` (Qwen3-VL: timestamps), ``get_text_with_replacements``, its tokenizer."""
    base = qwen_processor(model_type)
    proc = copy.copy(base)
    family = "qwen3_vl" if model_type == "qwen3_vl" else "qwen2_vl"
    config = QWEN3_HUB_VIDEO if model_type == "qwen3_vl" else QWEN2_HUB
    proc.video_processor = processor_instance(video_processors[family], {**config, **extra})
    text = proc.apply_chat_template(messages, tokenize=False)
    image_text = []
    if images:
        image_inputs = proc.image_processor(images=images)
        image_text = [proc.replace_image_token(image_inputs, i) for i in range(len(images))]
    video_text = []
    for path in videos:
        truth = pyav_truth(path)
        info = VideoInfo(truth["width"], truth["height"], truth["frames"], truth["fps"], None, truth["rotation"])
        indices, grid = processor_grid(proc.video_processor, info)
        inputs = {"video_grid_thw": torch.tensor([grid]),
                  "video_metadata": [VideoMetadata(total_num_frames=info.frames, fps=info.fps, frames_indices=indices)]}
        video_text.append(proc.replace_video_token(inputs, 0))
    (expanded,), _ = proc.get_text_with_replacements([text], image_text, video_text)
    return proc.tokenizer(expanded)["input_ids"]


def _rows(videos: Path, folder: Path) -> tuple[list[dict[str, Any]], list[tuple[list[Any], list[Path]]]]:
    from PIL import Image

    sizes = [(640, 480), (100, 30), (1000, 1000)]
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 40, 90, 10)).save(folder / f"im{i}.png")
    plans = [  # (content parts in order: "v:name" / "i:k" / text)
        ["v:a.mp4", "What happens here?"],
        ["i:0", "v:b.mp4", "Compare the photo and the clip."],
        ["v:c.mp4", "i:1", "v:rot90.mp4", "And these?"],
        ["Before the video.", "v:x264.mp4", "v:frag.mp4", "i:2"],
        ["v:clip.mov", "Short one."],
    ]
    rows, truth = [], []
    for k, plan in enumerate(plans):
        content, images, vids = [], [], []
        for item in plan:
            if item.startswith("v:"):
                content.append({"type": "video", "video": item[2:]})
                vids.append(videos / item[2:])
            elif item.startswith("i:"):
                name = f"im{item[2:]}.png"
                content.append({"type": "image", "image": name})
                images.append(Image.open(folder / name))
            else:
                content.append({"type": "text", "text": item})
        answer = [{"type": "text", "text": f"Answer {k}: a cat walks by."}]
        rows.append({"id": f"s{k}", "messages": [{"role": "user", "content": content},
                                                 {"role": "assistant", "content": answer}]})
        truth.append((images, vids))
    return rows, truth


@pytest.mark.parametrize(("model_type", "extra"), [
    ("qwen2_vl", {"do_sample_frames": True, "fps": 2}), ("qwen2_5_vl", {}), ("qwen3_vl", {}),
])
def test_scan_mixed_images_and_videos_equals_the_processor(videos, video_processors, tmp_path, model_type, extra) -> None:
    for name in ("a.mp4", "b.mp4", "c.mp4", "rot90.mp4", "x264.mp4", "frag.mp4", "clip.mov"):
        shutil.copy(videos / name, tmp_path / name)
    rows, truth = _rows(tmp_path, tmp_path)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    checkpoint = video_checkpoint(model_type, tmp_path / "ckpt")
    out = tmp_path / "out.jsonl"
    from vlmcheck.model import load_model

    spec = load_model(checkpoint, overrides=Overrides(extra=extra))
    report = scan(data, model=spec, output=out)
    assert set(report.counts) <= {"VC106"}  # the 100x30 image is under 32 px: a warning only
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for row, record, (images, vids) in zip(rows, records, truth):
        messages = json.loads(json.dumps(row["messages"]))
        for part in messages[0]["content"]:
            part.pop("video", None), part.pop("image", None)
        ids = processor_ids(model_type, messages, images, [tmp_path / v.name for v in vids], video_processors, extra)
        assert record["tokens"] == len(ids), row["id"]
        assert sum(record["video_tokens"]) == ids.count(151656)
        assert sum(record["image_tokens"]) == ids.count(151655)


def test_scan_cut_through_a_video_span(videos, video_processors, tmp_path) -> None:
    """VC205 wherever right truncation leaves a video fewer <|video_pad|> than it has features (inside a
    timestamped group, between groups, before the video), VC201 for the image, with the numbers of pads
    that survive: all read off the processor's own input_ids cut at max_length."""
    shutil.copy(videos / "a.mp4", tmp_path / "a.mp4")
    from PIL import Image

    Image.new("RGB", (640, 480)).save(tmp_path / "im.png")
    row = {"id": "cut", "messages": [
        {"role": "user", "content": "<video>Describe it.<image>"}, {"role": "assistant", "content": "A quiet room."}],
        "videos": ["a.mp4"], "images": ["im.png"]}
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(row) + "\n")
    checkpoint = video_checkpoint("qwen3_vl", tmp_path / "ckpt")
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe it."},
                                             {"type": "image"}]},
                {"role": "assistant", "content": "A quiet room."}]
    ids = processor_ids("qwen3_vl", messages, [Image.open(tmp_path / "im.png")], [tmp_path / "a.mp4"],
                        video_processors, {})
    # a.mp4: 60 frames at 30 fps -> int(60 / 30 * 2) = 4 frames -> 2 groups of 352x640 -> 2 x 220 pads
    assert ids.count(151656) == 440
    first_pad = ids.index(151656)
    between = first_pad + 220 + 3  # past the first group's pads, its <|vision_end|>, into "<1.3 seconds>"
    for max_length in (5, first_pad + 100, between, first_pad + 300, len(ids) - 50, len(ids)):
        out = tmp_path / f"cut{max_length}.jsonl"
        report = scan(data, model=checkpoint, max_length=max_length, output=out)
        assert json.loads(out.read_text())["tokens"] == len(ids)
        found = {f.code: f for f in report.findings}
        kept_video, kept_image = ids[:max_length].count(151656), ids[:max_length].count(151655)
        if kept_video < 440:
            assert found["VC205"].data["kept"] == kept_video and found["VC205"].data["video_tokens"] == 440
            assert "video 1 of 1 needs 440 tokens" in found["VC205"].message
        else:
            assert "VC205" not in found
        if kept_image < ids.count(151655):
            assert found["VC201"].data["kept"] == kept_image
        else:
            assert "VC201" not in found


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl"])
def test_a_video_option_that_is_not_a_number_is_a_finding_and_the_scan_goes_on(videos, tmp_path, model_type) -> None:
    """A content part's fps/nframes/max_pixels come from the data: a string there made
    ``smart_nframes``' arithmetic raise TypeError and the whole scan died. A None is an absent key
    (Arrow fills missing struct fields with None) and counts as the part without it."""
    from vlmcheck import scan

    shutil.copy(videos / "a.mp4", tmp_path / "a.mp4")

    def row(rid: str, **options: Any) -> dict[str, Any]:
        part = {"type": "video", "video": "a.mp4", **options}
        return {"id": rid, "messages": [{"role": "user", "content": [part, {"type": "text", "text": "hi"}]},
                                        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}]}

    rows = [row("fps", fps="x"), row("nframes", nframes="8"), row("pixels", max_pixels=[1]),
            row("flag", fps=True), row("none", fps=None, max_pixels=None), row("plain")]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "records.jsonl"
    report = scan(tmp_path / "d.jsonl", model=qwen_checkpoint(model_type), output=out, resize="qwen-vl-utils")
    found = {f.id: f for f in report.findings if f.code == "VC001"}
    assert sorted(found) == ["flag", "fps", "nframes", "pixels"]
    assert "video option fps must be a number, got str 'x'" in found["fps"].message
    tokens = {r["id"]: r["tokens"] for r in map(json.loads, out.read_text().splitlines())}
    assert tokens["none"] == tokens["plain"]
    assert tokens["plain"] > 100  # the video really was counted
