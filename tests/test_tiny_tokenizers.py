"""Tiny CLIP / ViLT tokenizers made from a run's sentences (evf_sam/tiny_tokenizers.py), read back by the
transformers classes the real checkpoints use, and the tiny encoders sized from them."""

from __future__ import annotations

import pytest
import torch

from evf_sam.models.encoders import build_prompt_encoder, load_encoder_tokenizer, tokenize_for_encoder, with_vocab_size
from evf_sam.tiny_tokenizers import make_tiny_tokenizer, tokenizer_files_present

SENTENCES = ["the red circle on the left", "the second shape from the right", "a bigger blue square"]


def test_tiny_clip_bpe_is_read_by_clip_tokenizer_one_token_per_seen_word(tmp_path):
    d = make_tiny_tokenizer("clip_tiny", SENTENCES, tmp_path / "tok")
    assert tokenizer_files_present("clip_tiny", d) and not tokenizer_files_present("vilt_tiny", d)
    tok = load_encoder_tokenizer("clip_tiny", d)
    ids, pad = tokenize_for_encoder("clip_tiny", tok, ["the second circle", "Purple  Left!"], 16)
    words = tok.convert_ids_to_tokens(ids[0][~pad[0]].tolist())
    assert words == ["<|startoftext|>", "the</w>", "second</w>", "circle</w>", "<|endoftext|>"]
    # an unseen word is spelled out in byte symbols (no unknown token), lower-cased as CLIP does
    assert tok.convert_ids_to_tokens(ids[1][~pad[1]].tolist())[1:-1] == ["p", "u", "r", "p", "l", "e</w>", "left</w>",
                                                                          "!</w>"]
    assert ids[0, 0] == 0 and ids[0, (~pad[0]).sum() - 1] == 1  # the clip_tiny preset's bos / eos ids
    assert (ids[0][pad[0]] == 1).all()  # padded with <|endoftext|>, as the release
    # the same sentences make the same vocabulary (a resumed or another rank's run agrees)
    again = make_tiny_tokenizer("clip_tiny", SENTENCES, tmp_path / "tok2")
    assert (again / "vocab.json").read_text() == (d / "vocab.json").read_text()
    assert (again / "merges.txt").read_text() == (d / "merges.txt").read_text()


def test_tiny_wordpiece_is_read_by_bert_tokenizer(tmp_path):
    d = make_tiny_tokenizer("vilt_tiny", SENTENCES, tmp_path / "tok")
    tok = load_encoder_tokenizer("vilt_tiny", d)
    ids, pad = tokenize_for_encoder("vilt_tiny", tok, ["The second circle", "purple"], 16)
    assert tok.convert_ids_to_tokens(ids[0][~pad[0]].tolist()) == ["[CLS]", "the", "second", "circle", "[SEP]"]
    assert tok.convert_ids_to_tokens(ids[1][~pad[1]].tolist()) == ["[CLS]", "p", "##u", "##r", "##p", "##l", "##e",
                                                                   "[SEP]"]
    assert tok.pad_token_id == 0 and (ids[1][pad[1]] == 0).all()


def test_semantic_token_is_beit3_only(tmp_path):
    with pytest.raises(ValueError, match=r"\[semantic\] token .* encoder='clip_tiny'"):
        make_tiny_tokenizer("clip_tiny", SENTENCES, tmp_path / "tok", semantic_token=True)


@pytest.mark.parametrize("encoder", ["clip_tiny", "vilt_tiny"])
def test_tiny_encoder_sized_for_its_tokenizer_and_pilot_image_keys(tmp_path, encoder):
    tok = load_encoder_tokenizer(encoder, make_tiny_tokenizer(encoder, SENTENCES, tmp_path / "tok"))
    # the pilot recipe's BEiT-3 image keys set the image tower; the vocabulary follows the tokenizer
    overrides = with_vocab_size(encoder, {"img_size": 48, "patch_size": 16}, len(tok))
    enc = build_prompt_encoder(encoder, fusion="late", overrides=overrides).eval()
    cfg = enc.model.config if encoder == "vilt_tiny" else None
    if encoder == "clip_tiny":
        assert overrides == {"img_size": 48, "patch_size": 16, "text_config": {"vocab_size": len(tok)}}
        emb = enc.text_model.embeddings.token_embedding
        vision = enc.vision_model.config
        assert (vision.image_size, vision.patch_size) == (48, 16)
    else:
        assert overrides["vocab_size"] == len(tok)
        emb = enc.model.embeddings.text_embeddings.word_embeddings
        assert (cfg.image_size, cfg.patch_size) == (48, 16)
    assert emb.num_embeddings == len(tok) and enc.image_size == 48
    ids, pad = tokenize_for_encoder(encoder, tok, SENTENCES, enc.max_text_len)
    torch.manual_seed(0)
    feats = enc(text_ids=ids, text_padding_mask=pad, image=torch.zeros(3, 3, 48, 48))
    assert feats.shape == (3, enc.feature_dim) and torch.isfinite(feats).all()
