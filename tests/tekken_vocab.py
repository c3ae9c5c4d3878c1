"""The real Tekken vocabulary of Pixtral-12B, offline, from the ``mistral-common`` wheel.

``mistral-common`` (1.13.1) ships ``mistral_common/data/tekken_240911.json``: the 131,072-id Tekken
tokenizer released with Pixtral-12B (its ``image`` block says patch 16, max image size 1024). The
file has no ``special_tokens`` list; mistral-common then uses ``Tekkenizer.DEPRECATED_SPECIAL_TOKENS``
(``mistral_common/tokens/tokenizers/tekken.py``): 20 named control tokens at ids 0-19, ``<SPECIAL_n>``
fillers up to 999, the BPE ranks from 1000 on. We write those 20 names into a copy of the file and
convert it with transformers' own ``convert_tekken_tokenizer`` (``integrations/mistral/tokenizer.py``),
so mistral-common need not be installed: only its wheel is read.

Checked against transformers' tests, which encode with the hub tokenizers:
``tests/models/pixtral/test_processing_pixtral.py`` (mistral-community/pixtral-12b) and
``tests/models/mistral3/test_processing_mistral3.py`` (Mistral-Small-3.1-24B-Instruct-2503): the same
prompt gives the same ids with both, ``[IMG]`` 10, ``[IMG_BREAK]`` 12, ``[IMG_END]`` 13; Pixtral-12B's
tokenizer adds no BOS (its chat template writes one), Mistral-Small-3.1's prepends ``<s>`` (1).
Built once, cached in ``$VLMCHECK_CACHE`` (default ``~/.cache/vlmcheck``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from cache_lock import serialized

WHEEL_VERSION = "1.13.1"
MEMBER = "mistral_common/data/tekken_240911.json"

# mistral_common/tokens/tokenizers/tekken.py: Tekkenizer.DEPRECATED_SPECIAL_TOKENS, ranks 0-19.
SPECIAL_TOKENS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)

# transformers tests/models/pixtral/test_processing_pixtral.py: the pixtral-12b tokenizer's ids for
# "USER: [IMG][IMG][IMG_BREAK][IMG][IMG][IMG_END]\nWhat's the content of the image? ASSISTANT:"
REFERENCE_TEXT = "USER: [IMG][IMG][IMG_BREAK][IMG][IMG][IMG_END]\nWhat's the content of the image? ASSISTANT:"
REFERENCE_IDS = [21510, 1058, 1032, 10, 10, 12, 10, 10, 13, 1010, 7493, 1681, 1278, 4701, 1307, 1278, 3937, 1063,
                 1349, 4290, 16002, 41150, 1058]


def _cache() -> Path:
    return Path(os.environ.get("VLMCHECK_CACHE") or Path.home() / ".cache" / "vlmcheck")


@serialized
def _wheel() -> Path:
    folder = _cache() / "wheels"
    found = sorted(folder.glob(f"mistral_common-{WHEEL_VERSION}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
         f"mistral-common=={WHEEL_VERSION}", "-d", str(folder)],
        check=True,
    )
    return sorted(folder.glob(f"mistral_common-{WHEEL_VERSION}-*.whl"))[0]


@serialized
def tekken_tokenizer_dir(*, add_bos: bool) -> Path:
    """A folder with tokenizer.json / tokenizer_config.json of the Tekken vocabulary.

    ``add_bos``: prepend ``<s>`` as Mistral-Small-3.1's tokenizer does; Pixtral-12B's does not.
    """
    dest = _cache() / ("tekken-tokenizer-bos" if add_bos else "tekken-tokenizer")
    if (dest / "tokenizer.json").is_file():
        return dest
    from tokenizers import processors
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    raw = json.loads(zipfile.ZipFile(_wheel()).read(MEMBER))
    raw["special_tokens"] = [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(SPECIAL_TOKENS)]
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    source = tmp / "tekken.json"
    source.write_text(json.dumps(raw))
    tok = convert_tekken_tokenizer(str(source), chat_template="")
    source.unlink()
    assert tok(REFERENCE_TEXT, add_special_tokens=False)["input_ids"] == REFERENCE_IDS
    assert [tok.convert_tokens_to_ids(t) for t in ("[IMG]", "[IMG_BREAK]", "[IMG_END]", "<s>")] == [10, 12, 13, 1]
    if add_bos:
        tok.backend_tokenizer.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]),
        ])
    tok.save_pretrained(str(tmp))
    (tmp / "chat_template.jinja").unlink(missing_ok=True)
    os.replace(tmp, dest)
    return dest
