# nf4_ref.py: an independent PyTorch (CUDA) implementation of bitsandbytes' NF4 + double quantization, written from REFERENCE.md §6, that writes the dumps test/test_nf4.cpp compares quant/nf4.cpp against.
#
# bitsandbytes itself is not installed anywhere we can run, so this script is the oracle. It follows the spec
# with plain vectorised torch ops in float32 on the GPU, where bitsandbytes computes on the GPU, and shares no
# code with the C++. Usage (on the GPU machine): python3 dev/ref/nf4_ref.py OUT_DIR
# It writes OUT_DIR/index.json (shapes, float bits, byte ranges), OUT_DIR/nf4_ref.bin (every array, raw
# little-endian) and OUT_DIR/dynamic_map_bits.txt (the map as hex float bits, for quant/dynamic_map.h).
import json
import math
import os
import struct
import sys
import traceback
from fractions import Fraction

import torch

NF4_BLOCK = 64
NESTED_BLOCK = 256

# bitsandbytes' NF4 table (get_4bit_type("nf4") and dDequantizeNF4), index = 4-bit code.
NF4_CODE = ["-1.0", "-0.6961928009986877", "-0.5250730514526367", "-0.39491748809814453",
            "-0.28444138169288635", "-0.18477343022823334", "-0.09105003625154495", "0.0",
            "0.07958029955625534", "0.16093020141124725", "0.24611230194568634", "0.33791524171829224",
            "0.44070982933044434", "0.5626170039176941", "0.7229568362236023", "1.0"]
# The constants of bitsandbytes' dQuantizeNF4 decision tree (midpoints of adjacent code values).
NF4_THRESHOLDS = ["-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
                  "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767",
                  "0.1202552504837513", "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
                  "0.5016634166240692", "0.6427869200706482", "0.8614784181118011"]


def f32_bits(x):
    """The bits of the float32 nearest to the Python float x."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f32_from_bits(b):
    return struct.unpack("<f", struct.pack("<I", b))[0]


def decimal_to_f32_bits(s):
    """The float32 nearest to the decimal literal s (ties to even), which is what the C/CUDA compiler makes of
    `<s>f` in bitsandbytes' source. Going through a Python float first rounds twice: the thresholds are exact
    double midpoints of float32 pairs, so the double sits on a float32 tie and four of them would land on the
    other neighbour."""
    exact = Fraction(s)
    if exact == 0:
        return 0x80000000 if s.startswith("-") else 0
    b = f32_bits(float(s))
    # b-1, b, b+1 are the neighbours in magnitude (same sign); pick the nearest, then the even mantissa
    return min((b - 1, b, b + 1), key=lambda c: (abs(Fraction(f32_from_bits(c)) - exact), c & 1))


def tensor_from_f32_bits(bits, device):
    signed = [b - (1 << 32) if b >= (1 << 31) else b for b in bits]
    return torch.tensor(signed, dtype=torch.int32).view(torch.float32).to(device)


def tensor_from_bf16_bits(bits):
    signed = [b - (1 << 16) if b >= (1 << 15) else b for b in bits]
    return torch.tensor(signed, dtype=torch.int16).view(torch.bfloat16)


def bits_of_f32_tensor(t):
    return [b & 0xFFFFFFFF for b in t.detach().cpu().contiguous().view(torch.int32).tolist()]


def raw_bytes(t):
    """A tensor's storage as little-endian bytes (this machine is x86-64)."""
    t = t.detach().cpu().contiguous().flatten()
    return bytes(t.view(torch.uint8).tolist())


def create_dynamic_map(device):
    """bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), written out for the
    signed case: 127 positive values, their negatives, 0 and 1.0, sorted. bitsandbytes builds it on the CPU
    (then moves it to the GPU); the last bits depend on torch's float32 linspace, hence the data file."""
    data = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32, device=device)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (i - 6)) * means).tolist()
        data += (-(10 ** (i - 6)) * means).tolist()
    data.append(0)
    data.append(1.0)
    assert len(data) == 256
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def nf4_codes(scaled, thresholds):
    """Number of thresholds strictly below each value: dQuantizeNF4's `x > t` tree. NaN is above none -> 0."""
    return (scaled.unsqueeze(-1) > thresholds).sum(dim=-1)


def dynamic_map_search(x, qmap):
    """bitsandbytes' dQuantize<0> for every element of x at once: start at pivot 127, seven halving steps
    (64 .. 1) going up when x > map[pivot], then one midpoint comparison with the neighbour on the side x
    points to. Reading: upper = map[last pivot x did not exceed] (map[255] if none), lower = map[last pivot
    x exceeded] (map[0] if none); if x > map[pivot]: answer the upper pivot when x > (upper+map[pivot])*0.5,
    else pivot; otherwise answer the lower pivot when x < (lower+map[pivot])*0.5, else pivot."""
    pivot = torch.full(x.shape, 127, dtype=torch.int64, device=x.device)
    upper_pivot = torch.full_like(pivot, 255)
    lower_pivot = torch.zeros_like(pivot)
    for step in (64, 32, 16, 8, 4, 2, 1):
        went_up = x > qmap[pivot]
        lower_pivot = torch.where(went_up, pivot, lower_pivot)
        upper_pivot = torch.where(went_up, upper_pivot, pivot)
        pivot = torch.where(went_up, pivot + step, pivot - step)
    val = qmap[pivot]
    upper = qmap[upper_pivot]
    lower = qmap[lower_pivot]
    from_above = torch.where(x > (upper + val) * 0.5, upper_pivot, pivot)
    from_below = torch.where(x < (lower + val) * 0.5, lower_pivot, pivot)
    return torch.where(x > val, from_above, from_below)


def blockwise_absmax(values, block):
    """values: fp32 [n] on the GPU. Pads with zeros to whole blocks, as bitsandbytes' loads do, and returns
    (padded values viewed [blocks, block], absmax [blocks])."""
    n = values.numel()
    blocks = (n + block - 1) // block
    padded = torch.zeros(blocks * block, dtype=torch.float32, device=values.device)
    padded[:n] = values
    padded = padded.view(blocks, block)
    return padded, padded.abs().amax(dim=1)


def unpack_nf4(packed, n):
    """Element 2j is the high nibble of byte j, element 2j+1 the low nibble."""
    p = packed.to(torch.int64)
    return torch.stack([p >> 4, p & 15], dim=1).flatten()[:n]


def reference_case(name, w_bf16, code, thresholds, qmap, device):
    """Quantizes one bf16 matrix like quantize_4bit(..., blocksize=64, compress_statistics=True,
    quant_type="nf4"), dequantizes it like dequantize_4bit, and returns the arrays and numbers to dump."""
    rows, cols = w_bf16.shape
    n = rows * cols
    x = w_bf16.to(device).flatten().float()

    # first level: NF4 codes in blocks of 64
    blocks_x, absmax = blockwise_absmax(x, NF4_BLOCK)
    scaled = blocks_x * torch.reciprocal(absmax).unsqueeze(1)  # multiply by the reciprocal, as the kernel does
    codes = nf4_codes(scaled, thresholds).flatten()  # includes the zero padding, as the kernel's stores do
    packed = (codes[0::2] * 16 + codes[1::2]).to(torch.uint8)[: (n + 1) // 2]

    # second level: absmax - mean(absmax), 8-bit dynamic map in blocks of 256
    blocks = absmax.numel()
    offset = absmax.mean()  # bitsandbytes' absmax.mean() on the GPU
    centered = absmax - offset
    blocks_v, nested_absmax = blockwise_absmax(centered, NESTED_BLOCK)
    x2 = (blocks_v * torch.reciprocal(nested_absmax).unsqueeze(1)).flatten()[:blocks]
    absmax_q = dynamic_map_search(x2, qmap).to(torch.uint8)

    # dequantize from the stored state only (dequantize_blockwise, then += offset, then the NF4 kernel)
    block_of_absmax = torch.arange(blocks, device=device) // NESTED_BLOCK
    absmax_dq = qmap[absmax_q.to(torch.int64)] * nested_absmax[block_of_absmax]
    absmax_dq = absmax_dq + offset
    q = unpack_nf4(packed, n)
    block_of_elem = torch.arange(n, device=device) // NF4_BLOCK
    dequant = (code[q] * absmax_dq[block_of_elem]).to(torch.bfloat16)
    dequant_plain = (code[q] * absmax[block_of_elem]).to(torch.bfloat16)

    # the offset computed other ways, to explain any difference from the C++ (double sum, rounded once)
    absmax_values = absmax.cpu().tolist()
    exact_sum = math.fsum(absmax_values)
    sum_f32 = f32_from_bits(f32_bits(exact_sum))
    inv_n_f32 = f32_from_bits(f32_bits(1.0 / blocks))
    offsets = {
        "offset_bits": bits_of_f32_tensor(offset.reshape(1))[0],
        "offset_f64_bits": f32_bits(exact_sum / blocks),
        "offset_cpu_bits": bits_of_f32_tensor(absmax.cpu().mean().reshape(1))[0],
        "offset_sum_times_inv_n_bits": f32_bits(sum_f32 * inv_n_f32),
        "sum_cuda_bits": bits_of_f32_tensor(absmax.sum().reshape(1))[0],
        "sum_exact_f32_bits": f32_bits(exact_sum),
    }

    arrays = {
        "input": w_bf16.flatten(), "packed": packed, "absmax": absmax, "absmax_q": absmax_q,
        "nested_absmax": nested_absmax, "absmax_dq": absmax_dq, "dequant": dequant, "dequant_plain": dequant_plain,
    }
    rel_err = ((dequant.float() - x).abs().max() / x.abs().max().clamp_min(1e-30)).item()
    print(f"{name}: [{rows}, {cols}] n={n} blocks={blocks} nested_blocks={nested_absmax.numel()} "
          f"offset={offset.item():.9g} (f64 {f32_from_bits(offsets['offset_f64_bits']):.9g}, "
          f"equal={offsets['offset_bits'] == offsets['offset_f64_bits']}) max rel err {rel_err:.3g}")
    return {"name": name, "rows": rows, "cols": cols, "numel": n, "blocks": blocks,
            "nested_blocks": nested_absmax.numel(), **offsets}, arrays


def bf16_neighbours(v):
    """v (bf16) and the bf16 values just below and above it in magnitude."""
    bits = v.view(torch.int16)
    return torch.cat([v, (bits - 1).view(torch.bfloat16), (bits + 1).view(torch.bfloat16)])


def make_inputs(code, thresholds):
    g = torch.Generator().manual_seed(20240611)
    cases = []

    # random weights, two rows shrunk by 1e-3 and two blown up by 1e3, and one all-zero 64-block
    w = torch.randn(48, 96, generator=g) * 0.02
    w[3] *= 1e-3
    w[10] *= 1e-3
    w[5] *= 1e3
    w[20] *= 1e3
    w = w.to(torch.bfloat16).flatten()
    w[640:704] = 0  # block 10, which no scaled row touches
    cases.append(("randn_scaled_rows", w.view(48, 96)))

    # values at and around every threshold (bf16 cannot hold the fp32 thresholds exactly, so the nearest
    # bf16 values on both sides) and every code value, times a scale per block; each block holds its scale
    # (its absmax) and both zeros
    thr_cpu, code_cpu = thresholds.cpu(), code.cpu()
    blocks = []
    for scale in (1.0, 2.0 ** -5, 3.0, 0.1, 1e30, 2.5e38):
        near_thresholds = bf16_neighbours((thr_cpu * scale).to(torch.bfloat16))
        codes_scaled = (code_cpu * scale).to(torch.bfloat16)
        extra = torch.tensor([scale, 0.0, -0.0]).to(torch.bfloat16)
        block = torch.cat([near_thresholds, codes_scaled, extra])
        assert block.numel() == 64
        blocks.append(block[torch.randperm(64, generator=g)])
    cases.append(("thresholds", torch.stack(blocks)))

    # bf16 subnormals: an absmax whose reciprocal is finite; one (-2^-128) whose reciprocal overflows to inf,
    # so x * inf = +-inf and 0 * inf = NaN; normals mixed with subnormals; the smallest normal as absmax
    def random_bits(lo, hi, count):
        mag = torch.randint(lo, hi + 1, (count,), generator=g)
        sign = torch.randint(0, 2, (count,), generator=g) * 0x8000
        return (mag + sign).tolist()
    block0 = [0x007F] + random_bits(1, 0x7F, 63)
    block1 = [0x8020, 0x0000, 0x8000] + random_bits(0, 0x20, 61)
    block3 = [0x8080, 0x0040, 0x8000, 0x0000] + random_bits(0, 0x7F, 60)
    normals = (torch.randn(32, generator=g) * 0.02).to(torch.bfloat16)
    block2 = torch.cat([normals, tensor_from_bf16_bits(random_bits(1, 0x7F, 32))])[torch.randperm(64, generator=g)]
    sub = torch.stack([tensor_from_bf16_bits(block0), tensor_from_bf16_bits(block1), block2,
                       tensor_from_bf16_bits(block3)])
    cases.append(("subnormals", sub))

    # sizes that are not whole blocks: 65 elements (odd, a last block of one), 21 (a single block, so the
    # nested values are all 0 and 0 * inf = NaN goes through the map search)
    cases.append(("tail_5x13", (torch.randn(5, 13, generator=g) * 0.02).to(torch.bfloat16)))
    cases.append(("tiny_3x7", (torch.randn(3, 7, generator=g) * 0.02).to(torch.bfloat16)))

    # 600 blocks: three nested blocks, the last partial (88); rows scaled by e^U(-1,1); one all-zero block
    w = torch.randn(120, 320, generator=g) * 0.02
    w *= torch.exp(torch.rand(120, 1, generator=g) * 2 - 1)
    w = w.to(torch.bfloat16).flatten()
    w[37 * 64: 38 * 64] = 0
    cases.append(("nested_600", w.view(120, 320)))

    # 2048 blocks: eight whole nested blocks, and more values for the offset's mean
    cases.append(("blocks_2048", (torch.randn(128, 1024, generator=g) * 0.02).to(torch.bfloat16)))
    return cases


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python3 dev/ref/nf4_ref.py OUT_DIR")
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, device {device}")

    code_bits = [decimal_to_f32_bits(s) for s in NF4_CODE]
    threshold_bits = [decimal_to_f32_bits(s) for s in NF4_THRESHOLDS]
    via_double = [f32_bits(float(s)) for s in NF4_THRESHOLDS]
    print("thresholds where float32(float(s)) != the literal:",
          [s for s, a, b in zip(NF4_THRESHOLDS, threshold_bits, via_double) if a != b])
    code = tensor_from_f32_bits(code_bits, device)
    thresholds = tensor_from_f32_bits(threshold_bits, device)

    qmap_cpu = create_dynamic_map("cpu")
    qmap_gpu = create_dynamic_map(device)
    map_bits = bits_of_f32_tensor(qmap_cpu)
    map_bits_gpu = bits_of_f32_tensor(qmap_gpu)
    diffs = [i for i in range(256) if map_bits[i] != map_bits_gpu[i]]
    print(f"dynamic map: map[0]={qmap_cpu[0].item():.9g} map[127]={qmap_cpu[127].item()} map[255]="
          f"{qmap_cpu[255].item()} sorted={bool((qmap_cpu[1:] > qmap_cpu[:-1]).all())}; "
          f"entries where the {device} linspace gives other bits: {diffs}")
    qmap = qmap_cpu.to(device)  # bitsandbytes builds it on the CPU and moves it

    with open(os.path.join(out_dir, "dynamic_map_bits.txt"), "w") as f:
        for i in range(0, 256, 8):
            f.write(" ".join(f"0x{b:08x}," for b in map_bits[i:i + 8]) + "\n")

    blob = bytearray()
    index = {"blob": "nf4_ref.bin", "torch": torch.__version__, "device": device,
             "nf4_code_bits": code_bits, "nf4_threshold_bits": threshold_bits,
             "dynamic_map_bits": map_bits, "dynamic_map_bits_on_device": map_bits_gpu, "cases": []}
    dtypes = {"input": "bf16", "packed": "u8", "absmax": "f32", "absmax_q": "u8", "nested_absmax": "f32",
              "absmax_dq": "f32", "dequant": "bf16", "dequant_plain": "bf16"}
    failures = 0
    for name, w in make_inputs(code, thresholds):
        try:
            meta, arrays = reference_case(name, w, code, thresholds, qmap, device)
        except Exception:
            failures += 1
            traceback.print_exc()
            continue
        meta["arrays"] = {}
        for key, t in arrays.items():
            data = raw_bytes(t)
            meta["arrays"][key] = {"dtype": dtypes[key], "count": t.numel(), "offset": len(blob), "bytes": len(data)}
            blob += data
        index["cases"].append(meta)

    with open(os.path.join(out_dir, "nf4_ref.bin"), "wb") as f:
        f.write(blob)
    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    print(f"wrote {len(index['cases'])} cases, {len(blob)} bytes; {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
