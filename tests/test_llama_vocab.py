"""The Llama-2 vocabulary fixture reproduces llama.cpp's reference encodings, all of them."""

from __future__ import annotations

import pytest

from llama_vocab import llama2_tokenizer_dir, reference_cases


@pytest.mark.slow
def test_llama2_vocab_matches_llama_cpp_references():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(llama2_tokenizer_dir() / "tokenizer.json"))
    cases = reference_cases()
    assert len(cases) >= 40
    wrong = [(text, ids) for text, ids in cases if tok.encode(text, add_special_tokens=False).ids != ids]
    assert not wrong, wrong[:3]
    assert tok.token_to_id("<image>") == 32000


def test_llama2_sentencepiece_model_matches_llama_cpp_references():
    import sentencepiece as spm

    from llama_vocab import sentencepiece_model

    sp = spm.SentencePieceProcessor(model_file=str(sentencepiece_model()))
    cases = reference_cases()
    wrong = [(text, ids) for text, ids in cases if sp.encode(text) != ids]
    assert not wrong, wrong[:3]
    assert sp.get_piece_size() == 32000 and sp.bos_id() == 1 and sp.eos_id() == 2
