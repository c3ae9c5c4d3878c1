"""The findings catalogue: every problem vlmcheck can report, with a stable code.

Codes never change meaning once released; docs/findings.md is generated from :data:`CATALOGUE` and the
other catalogues that keep their anchors on that page (``python -m vlmcheck.findings > docs/findings.md``),
and a test fails when the two drift. :class:`Finding` and the catalogue mechanism live in
:mod:`vlmcheck.catalogue` and are re-exported here.
"""

from __future__ import annotations

from typing import Any

from vlmcheck.catalogue import Catalogue, Finding, Rule, Severity, catalogues, register, render_codes

__all__ = ["BY_NAME", "CATALOGUE", "SCAN_CODES", "Finding", "Rule", "Severity", "make", "render_markdown"]

_RULES = [
    # -- rows ---------------------------------------------------------------------------------
    Rule("VC001", "malformed-row", Severity.ERROR, "A row cannot be read as a conversation",
         "Invalid JSON, a row that is not an object, wrong field types, no conversation, or bytes that "
         "are not UTF-8. Frameworks either crash on it at load time or skip it silently.",
         "Fix or remove the row; the message names the field."),
    Rule("VC002", "placeholder-mismatch", Severity.ERROR, "Image placeholders and images differ in number",
         "The processor pairs the i-th placeholder with the i-th image. A missing or extra `<image>` tag "
         "raises in the processor or model (\"Image features and image tokens do not match\"), or pairs "
         "images with the wrong text.",
         "Make the number of `<image>` tags (or image content parts) equal the number of images."),
    Rule("VC003", "no-supervised-tokens", Severity.ERROR, "The sample has no assistant tokens to learn from",
         "With every label masked, the loss of this sample is 0 (or NaN when the whole batch is masked).",
         "Add the assistant turn, or drop the sample."),
    Rule("VC004", "text-dropped-by-template", Severity.ERROR, "The chat template drops text of the conversation",
         "The rendered conversation lacks text the row holds: the template renders only some content shapes "
         "(processor templates render typed parts and drop plain strings; others skip roles or keys). The "
         "model never sees that text, supervision on it is lost, and the sample's length is counted without "
         "it.",
         "Write the content in the shape the template renders (typed text parts for processor templates, "
         "as TRL's prepare_multimodal_messages does), or fix the template."),
    Rule("VC007", "not-counted", Severity.WARNING, "vlmcheck does not model what the framework does with this row",
         "The row uses something of the framework's data path that vlmcheck does not simulate yet (for instance "
         "LLaMA-Factory's tools under a template without the qwen tool format, ms-swift's videos, or a value "
         "datasets rewrites in a way vlmcheck does not follow): its length and its verdict are unknown, never "
         "guessed.",
         "Check the row with the framework itself, or with `vlmcheck scan --exact` on the rendered text."),
    Rule("VC008", "rewritten-by-loader", Severity.WARNING, "The data loader returns this row otherwise than the file writes it",
         "datasets (4.7 and later) keeps a field whose values have mixed types (a string in one row, a list in "
         "another; objects with other fields) as JSON text: a string of it that reads as JSON (\"2\", \"true\", "
         "\"null\", quoted text, an object) comes back as that value, and a field that was text in the first 10 "
         "MiB (or the first file) is written as JSON text from the chunk where it mixes, quotes and escapes "
         "included. A JSON array's lone UTF-16 surrogate escape (\\ud800 with no low half after it) is dropped by "
         "the JSON reader datasets uses for arrays. The framework trains on what datasets returns: vlmcheck counts "
         "that, and names the fields.",
         "Give the field one type in every row (content always a string, or always a list of parts); write text "
         "as valid UTF-8 (no lone surrogate escapes)."),
    Rule("VC006", "dropped-by-framework", Severity.WARNING, "The training framework skips this row",
         "The framework's own converter rejects the row (roles that do not alternate, an odd number of turns, no "
         "answer) and trains without it, logging one line among thousands: the data you count on is not trained "
         "on.",
         "Fix the row's turns (the message says what the framework expects), or remove it."),
    # -- images -------------------------------------------------------------------------------
    Rule("VC101", "image-missing", Severity.ERROR, "An image file does not exist",
         "The data loader raises FileNotFoundError at the step that reaches this sample.",
         "Fix the path, or pass --image-root with the folder the paths are relative to."),
    Rule("VC102", "image-unreadable", Severity.ERROR, "An image cannot be decoded",
         "An empty file, a file that is not an image, or a corrupt header: PIL raises "
         "UnidentifiedImageError when the processor opens it.",
         "Replace the file, or drop the sample."),
    Rule("VC103", "image-truncated", Severity.ERROR, "An image file ends before its image data does",
         "The header reads fine, but decoding raises \"OSError: image file is truncated\" in the middle "
         "of training (unless ImageFile.LOAD_TRUNCATED_IMAGES is set, which trains on a grey block).",
         "Re-download or re-encode the file."),
    Rule("VC104", "image-outside-root", Severity.ERROR, "An image path points outside the image root (--confine)",
         "Only with --confine (--strict-root): an absolute path, a `..` or a symlink that resolves outside the "
         "image root. Reading your own files there is not an escape, so scans read them by default; for data "
         "you do not trust, --confine keeps every read under the root (docs/security.md).",
         "Make the path relative to the image root, or drop --confine if the data is your own."),
    Rule("VC105", "image-too-large", Severity.ERROR, "An image declares more pixels than PIL will decode",
         "PIL refuses images over 2 x Image.MAX_IMAGE_PIXELS (DecompressionBombError) and decoding one "
         "near the limit takes gigabytes of memory per data-loader worker.",
         "Downscale the file, or drop the sample."),
    Rule("VC106", "image-too-small", Severity.WARNING, "An image is below the family's minimum size",
         "The processor upsamples it to the minimum (wasted tokens, a blurry image); transformers "
         "before 4.50 raised ValueError for Qwen2-VL images under 28 px on a side.",
         "Check that the image is what you meant to train on."),
    Rule("VC107", "image-aspect-ratio", Severity.ERROR, "An image is more elongated than the processor accepts",
         "Qwen2-VL-family processors raise \"absolute aspect ratio must be smaller than 200\"; LLaVA's CLIP "
         "processor resizes the shortest edge first, so a 1x100,000 banner becomes 336x33,600,000 pixels and "
         "exhausts memory.",
         "Crop or pad the image, or drop the sample."),
    Rule("VC108", "image-dropped", Severity.ERROR, "The framework trains on this row without its images",
         "The framework never loads the row's images (LLaMA-Factory's v1 engine in 0.9.5 has no image path: its "
         "converters read the text only), or drops an image instead of failing: the model learns from the text "
         "alone, its image tags read as plain text, and nothing in the training log says so.",
         "Train the data on a path that loads images (LLaMA-Factory's default engine: unset USE_V1), or drop the "
         "images from the rows if text-only training is meant."),
    # -- videos -------------------------------------------------------------------------------
    Rule("VC111", "video-missing", Severity.ERROR, "A video file does not exist",
         "The video loader (torchcodec, decord) raises at the step that reaches this sample. Remote URLs are "
         "reported here too: vlmcheck reads local files only.",
         "Fix the path, or pass --image-root with the folder the paths are relative to."),
    Rule("VC112", "video-unreadable", Severity.ERROR, "A video's container cannot be read",
         "An empty file, a file that is not a video, a corrupt header, or a file without a video track: the "
         "decoder raises when the processor opens it.",
         "Replace the file, or drop the sample."),
    Rule("VC113", "video-truncated", Severity.ERROR, "A video file ends before its container says it does",
         "A cut download or copy: an MP4 whose moov box never arrived cannot be opened at all, and one cut in "
         "its media data fails or returns fewer frames mid-training.",
         "Re-download or re-encode the file."),
    Rule("VC114", "video-not-counted", Severity.WARNING, "A video vlmcheck cannot count from its headers",
         "WebM/Matroska keep the frame count out of their headers, an image file given as a video (a GIF, "
         "a PNG: FFmpeg opens it as a video of its frames) and a video given as a list of frame images (outside "
         "LLaMA-Factory's Qwen-VL templates, which count it) "
         "is not counted yet, and only the Qwen VL families count videos (under --resize prescale they do "
         "not either): the sample's length is unknown.",
         "Remux to MP4 (`ffmpeg -i in.webm -c copy out.mp4` where the codec allows, else re-encode), or "
         "check the sample with `vlmcheck scan --exact`."),
    Rule("VC115", "video-rejected", Severity.ERROR, "The video processor rejects this video",
         "Too few frames to sample (Qwen3-VL raises \"t:1 must be larger than temporal_factor:2\"; Qwen2-VL's "
         "fps sampling divides by zero on a 1-frame clip), or frames more elongated than the aspect limit "
         "(\"absolute aspect ratio must be smaller than 200\").",
         "Drop the video, or re-encode it with more frames or a saner frame size."),
    Rule("VC116", "video-frames-mismatch", Severity.ERROR,
         "The framework writes a different number of video tokens than the video has features",
         "LLaMA-Factory counts a video's tokens from its container's frame count without decoding it, and its "
         "collator then decodes the frames: a fragmented MP4 declares no frame count (ffmpeg's nb_frames is 0), "
         "so the text gets video_maxlen frames' tokens while only the frames the file has are decoded; and its "
         "Qwen3-VL plugin writes every video of a sample with the first video's frame-group count. The model "
         "raises (\"Videos features and video tokens do not match\", or a shape mismatch computing positions) at "
         "the step that reaches the sample.",
         "Remux a fragmented file (`ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4`); under Qwen3-VL keep "
         "one video per sample or equal frame counts; or drop the sample."),
    # -- length -------------------------------------------------------------------------------
    Rule("VC201", "image-span-cut", Severity.ERROR, "Truncation cuts through an image's placeholder span",
         "The text keeps fewer image tokens than the image has features: the model raises \"Image "
         "features and image tokens do not match\" (or a shape-mismatch IndexError) at the step that "
         "reaches this sample.",
         "Raise the max length, cap max_pixels, or drop/split the sample (`vlmcheck repair`)."),
    Rule("VC202", "supervision-truncated", Severity.ERROR, "Truncation removes every supervised token",
         "All labels of the sample are masked after truncation: its loss is 0, or NaN if the whole batch "
         "is like it.",
         "Raise the max length, shorten the prompt, or drop the sample."),
    Rule("VC203", "text-truncated", Severity.WARNING, "The sample is over the max length; the cut falls in text",
         "No crash, but the model never sees the end of the sample; supervised tokens lost there are not "
         "learned.",
         "Raise the max length if the tail matters."),
    Rule("VC204", "sample-dropped", Severity.WARNING, "The framework will drop this over-length sample",
         "The framework removes a sample over its length limit before training (ms-swift's "
         "truncation_strategy=delete, verl's and EasyR1's overlong prompt filter, TRL's DPO filter on a prompt "
         "filling max_length, LLaMA-Factory's packing): it is silently not trained on.",
         "Raise the max length, or accept the loss of the sample."),
    Rule("VC205", "video-span-cut", Severity.ERROR, "Truncation cuts through a video's placeholder span",
         "The text keeps fewer video tokens than the video has features: the model raises \"Videos features "
         "and video tokens do not match\" at the step that reaches this sample.",
         "Raise the max length, sample fewer frames (fps / max_frames) or fewer pixels per frame, or drop the "
         "sample."),
    Rule("VC206", "prompt-over-budget", Severity.ERROR, "An RL prompt is longer than the run's prompt budget",
         "RL frameworks generate from the prompt alone: a prompt over the budget (verl's max_prompt_length with "
         "truncation='error', vLLM's max model length) stops the run at the step that reaches it.",
         "Raise the prompt budget, cap the image pixels, or drop the sample."),
    Rule("VC207", "cross-attention-misaligned", Severity.ERROR,
         "After the cut, the image cross-attention mask no longer lines up with the text",
         "The framework builds Llama 3.2 Vision's cross_attention_mask from the whole sample and cuts only the "
         "tokens (ms-swift's llama3_2_vision template); the model reads the mask's first rows for the tokens left, "
         "so after a left cut, or a right cut that keeps an image token from past it, some text tokens attend the "
         "wrong image or none. Nothing raises: the sample trains with its text and images mismatched.",
         "Raise the max length so the sample is not cut, cut from the right with every image before the cut, or "
         "drop the sample."),
    Rule("VC208", "skipped-rows-stop-run", Severity.ERROR,
         "The framework skips so many rows that its data loader gives up and the run stops",
         "A finding of the whole run, not of one sample. ms-swift (--strict false, the default) replaces a row it "
         "cannot encode (over --max_length under truncation_strategy delete, or an encode error) by drawing others, "
         "at most 10 tries per fetch, then raises 'Failed to retrieve the dataset'. When every row is skipped the "
         "first fetch raises; when many are, some fetch during the epochs is likely to draw only skipped rows. "
         "ms-swift's GRPO trainer (truncation_strategy delete) replaces the prompts of a generation batch it cannot "
         "encode with at most ten times the batch's rows drawn again, then raises 'resample: only collected ...'. "
         "Where ms-swift encodes every row while loading (--lazy_tokenize false, --packing, --group_by_length) it "
         "deletes those rows instead, and only a dataset left empty stops the run.",
         "Make the skipped rows trainable (raise the max length, cap the image pixels), or remove them from the "
         "dataset (`vlmcheck repair`)."),
]

SCAN_CODES = register(Catalogue("VC", "scan", "docs/findings.md", tuple(_RULES)))
CATALOGUE: dict[str, Rule] = SCAN_CODES.codes
BY_NAME: dict[str, Rule] = {rule.name: rule for rule in _RULES}


def make(code: str, message: str, *, fix: str | None = None, **data: Any) -> Finding:
    """Build a scan finding for ``code``; index/id are filled in by the scan."""
    if code not in CATALOGUE:
        raise KeyError(f"unknown finding code {code!r}")
    return Finding(code=code, message=message, fix=fix or CATALOGUE[code].fix, data=data)


def render_markdown() -> str:
    """The findings page, generated from the catalogue."""
    lines = [
        "# Findings",
        "",
        "<!-- Generated by `python -m vlmcheck.findings`; do not edit by hand. -->",
        "",
        "Every problem vlmcheck reports has a stable code. `--fail-on` picks the severity that makes "
        "`vlmcheck scan` exit 1 (default: error).",
        "",
        render_codes(_RULES),
    ]
    for catalogue in catalogues():
        if catalogue.page == SCAN_CODES.page and catalogue.prefix != SCAN_CODES.prefix:
            lines += ["", f"## {catalogue.reporter.capitalize()} codes ({catalogue.prefix})", "",
                      catalogue.intro, "", catalogue.render(heading="###")]
    lines += ["", "Config lint codes (VL) are in [lint.md](lint.md), template codes (VT) in "
              "[templates.md](templates.md); `vlmcheck explain CODE` prints any of them."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
