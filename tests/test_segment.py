"Integration tests for llmbind.segment: checkpoint round trip, <seg> positions after several images, mask sizes."
import tempfile
import numpy as np
import pytest
import torch
from llmbind.config import LLMBindConfig, SegmentConfig
from llmbind.segment import (SegmentationModule, build_sam, decode_masks, gather_embedding_states, preprocess_for_sam)
from llmbind.vision import IMAGE_POSITION_ID, splice_image_features

torch.set_num_threads(1)
SCFG = LLMBindConfig.tiny().segment


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_roundtrip_same_masks(suffix):
    a = SegmentationModule(SCFG, 16, sam=build_sam(SCFG, seed=3))
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/sam{suffix}"
        if suffix == ".pth": torch.save(a.sam.state_dict(), path)
        else:
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in a.sam.state_dict().items()}, path)
        b = SegmentationModule(SegmentConfig(**{**SCFG.to_dict(), "checkpoint": path}), 16)
    b.text_hidden_fcs.load_state_dict(a.text_hidden_fcs.state_dict())
    sb = preprocess_for_sam([np.random.default_rng(0).integers(0, 255, (30, 70, 3), dtype=np.uint8)], SCFG.image_size)
    q = [torch.randn(2, SCFG.prompt_embed_dim)]
    with torch.no_grad():
        ma = decode_masks(a.sam, a.encode_images(sb.pixel_values), q, sb.resized_sizes, sb.original_sizes)[0]
        mb = decode_masks(b.sam, b.encode_images(sb.pixel_values), q, sb.resized_sizes, sb.original_sizes)[0]
    assert ma.shape == (2, 30, 70)
    torch.testing.assert_close(ma, mb, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(64, 64), (10, 90), (90, 10), (1, 300), (333, 17)])
def test_masks_at_original_size(hw):
    sam = build_sam(SCFG)
    sb = preprocess_for_sam([np.zeros((*hw, 3), np.uint8)], SCFG.image_size)
    with torch.no_grad():
        m = decode_masks(sam, sam.image_encoder(sb.pixel_values), [torch.randn(3, SCFG.prompt_embed_dim)],
                         sb.resized_sizes, sb.original_sizes, batched=True)[0]
    assert m.shape == (3, *hw)


def test_seg_state_after_two_images_of_different_sizes():
    "Two images (5 and 3 patches) before the first <seg>, one between the <seg>s: positions found without offsets."
    IMG, SEG, D = 50, 51, 4
    ids = torch.tensor([[1, IMG, 7, IMG, 8, SEG, 9, IMG, SEG, 2], [1, 7, 8, 9, 2, 3, 3, 3, 3, 3]])
    mask = (torch.arange(10) < torch.tensor([[10], [5]])).long()
    feats = [torch.randn(5, D), torch.randn(3, D), torch.randn(2, D)]
    sp = splice_image_features(ids, torch.randn(2, 10, D), feats, IMG, mask)
    # by hand: <s>=0, img 1..5, 7=6, img 7..9, 8=10, <seg>=11, 9=12, img 13..14, <seg>=15
    hidden = torch.arange(sp.token_ids.numel() * D, dtype=torch.float).view(*sp.token_ids.shape, D)
    states = gather_embedding_states(hidden, sp.token_ids, SEG)
    assert torch.equal(states[0], hidden[0, [10, 14]])
    assert states[1].shape == (0, D)
    assert sp.token_ids[0, 13:15].tolist() == [IMAGE_POSITION_ID] * 2
