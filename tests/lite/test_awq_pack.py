"""AWQ GEMM packing: hand-computed words (nibble order), round trips, and agreement with the quantizer."""
import numpy as np
import pytest
import torch

from turbolm.lite.awq_pack import ORDER_4BIT, dequantize_awq, pack, pack_awq, unpack, unpack_awq
from turbolm.lite.quantize import dequantize, quantize


def test_hand_computed_4bit_words():
    m = np.array([[0, 1, 2, 3, 4, 5, 6, 7],
                  [8, 9, 10, 11, 12, 13, 14, 15]])
    # value j (bits 4j..4j+3) holds column [0, 2, 4, 6, 1, 3, 5, 7][j]
    assert pack(m, 4).tolist() == [[0x75316420], [np.int32(np.uint32(0xFDB9ECA8).view(np.int32))]]
    assert pack(m, 4).dtype == np.int32
    one = np.zeros((1, 8), dtype=np.int64)
    one[0, 1] = 0xF                       # column 1 -> value 4 -> bits 16..19
    assert pack(one, 4)[0, 0] == 0xF << 16


def test_matches_autoawq_loop():
    rng = np.random.default_rng(0)
    w = rng.integers(0, 16, size=(5, 24))
    ref = np.zeros((5, 3), dtype=np.uint32)
    for col in range(3):                  # AutoAWQ WQLinear_GEMM.from_linear, spelled out
        for i in range(8):
            ref[:, col] |= w[:, col * 8 + ORDER_4BIT[i]].astype(np.uint32) << np.uint32(4 * i)
    np.testing.assert_array_equal(pack(w, 4), ref.view(np.int32))


def test_hand_computed_8bit_word():
    assert pack(np.array([[1, 2, 3, 0xFF]]), 8)[0, 0] == np.uint32(0xFF030201).view(np.int32)


@pytest.mark.parametrize("bits", [4, 8])
def test_roundtrip(bits):
    rng = np.random.default_rng(bits)
    v = rng.integers(0, 1 << bits, size=(7, 64))
    np.testing.assert_array_equal(unpack(pack(v, bits), bits), v)
    with pytest.raises(ValueError):
        pack(v[:, :3], bits)
    with pytest.raises(ValueError):
        pack(v + (1 << bits), bits)


@pytest.mark.parametrize("bits", [4, 8])
def test_awq_tensors_shapes_and_dequant(bits):
    out_f, in_f, g = 32, 64, 16
    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(0))
    q, z, s = quantize(w, bits, g)
    qweight, qzeros, scales = pack_awq(q.numpy(), z.numpy(), s.numpy(), bits)
    per = 32 // bits
    assert qweight.shape == (in_f, out_f // per) and qweight.dtype == np.int32
    assert qzeros.shape == (in_f // g, out_f // per) and qzeros.dtype == np.int32
    assert scales.shape == (in_f // g, out_f) and scales.dtype == np.float16
    q2, z2, s2 = unpack_awq(qweight, qzeros, scales, bits)
    np.testing.assert_array_equal(q2, q.numpy())
    np.testing.assert_array_equal(z2, z.numpy())
    np.testing.assert_array_equal(s2, s.numpy())     # scales are fp16 values already
    np.testing.assert_allclose(dequantize_awq(qweight, qzeros, scales, bits), dequantize(q, z, s, g).numpy(),
                               rtol=0, atol=1e-6)
    err = np.abs(dequantize_awq(qweight, qzeros, scales, bits) - w.numpy()).max()
    assert err <= s.max().item() * 0.51 + 1e-6    # round to nearest, within half a step
