# export_hf.py: converts an HF Qwen2 directory (config.json + safetensors) into the project's .bin with bf16 weights, using only the Python standard library.
#
#   python3 dev/export_hf.py HF_DIR OUT.bin
#
# The file format is model/bin_format.h's, and the output is byte-identical to what the C++ writer (bin_save)
# produces for the same weights: a 2048-byte header (256 int32, then 256 float32), zeros up to byte 4096, then
# every tensor of the weight plan (model/weights.cpp: weight_plan with bf16 linears) at its offset, each offset a
# multiple of 256 with zero bytes in the gaps. To quantize the result to NF4 run `./quantize OUT.bin OUT_NF4.bin`
# (or pass the HF directory to quantize directly).
#
# Only struct/json/mmap/array, so it runs anywhere (no torch, no numpy). BF16 tensors are copied as they are;
# F32 and F16 tensors are rounded to bf16 (round to nearest even, as torch's .to(torch.bfloat16)) one element at a
# time in pure Python: correct but slow (minutes per billion parameters). Published Qwen2.5 checkpoints are bf16.
import array
import json
import mmap
import os
import struct
import sys

MAGIC = 0x4F505247          # "GRPO" as a little-endian int32
VERSION = 1
HEADER_INTS = 256
HEADER_FLOATS = 256
PAYLOAD_OFFSET = 4096       # a page boundary, so the mapped payload keeps the plan's 256-byte alignment
WEIGHT_ALIGN = 256
FORMAT_BF16 = 0


def fail(message):
    sys.stderr.write("export_hf.py: error: " + message + "\n")
    sys.exit(1)


def load_config(hf_dir):
    """The fields of config.json the .bin header needs, with the same defaults and refusals as qwen2_config_load."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        fail(f"{hf_dir}: no config.json; pass the HF model directory")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if raw.get("model_type") != "qwen2":
        fail(f"{path}: model_type is {raw.get('model_type')!r}, expected 'qwen2'")
    if raw.get("quantization_config") is not None:
        fail(f"{path}: the checkpoint is quantized; export the original bf16 release (bitsandbytes NF4 directories "
             "are converted by `quantize DIR OUT.bin`)")
    if raw.get("use_sliding_window"):
        fail(f"{path}: sliding-window attention is not implemented")
    cfg = {}
    for key, field in [("V", "vocab_size"), ("C", "hidden_size"), ("I", "intermediate_size"),
                       ("L", "num_hidden_layers"), ("NH", "num_attention_heads"), ("KVH", "num_key_value_heads"),
                       ("max_pos", "max_position_embeddings")]:
        value = raw.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            fail(f"{path}: field {field!r} must be a positive integer, got {value!r}")
        cfg[key] = value
    cfg["HD"] = raw.get("head_dim") or cfg["C"] // cfg["NH"]
    cfg["tied"] = bool(raw.get("tie_word_embeddings", False))  # Qwen2Config's own default
    cfg["rms_norm_eps"] = raw.get("rms_norm_eps")
    theta = raw.get("rope_theta")
    for nested in ("rope_parameters", "rope_scaling"):
        obj = raw.get(nested)
        if obj is None:
            continue
        if obj.get("rope_type", obj.get("type", "default")) != "default":
            fail(f"{path}: {nested} asks for scaled RoPE, which is not implemented")
        if obj.get("rope_theta") is not None:
            theta = obj["rope_theta"]
    if theta is None or cfg["rms_norm_eps"] is None:
        fail(f"{path}: rope_theta and rms_norm_eps are required")
    cfg["rope_theta"] = theta
    return cfg


def weight_plan(cfg):
    """[(name, shape, offset, bytes)] exactly as weight_plan(cfg, LinearFormat::BF16) lays them out."""
    V, C, I, L, NH, KVH, HD = (cfg[k] for k in ("V", "C", "I", "L", "NH", "KVH", "HD"))
    Q, KV = NH * HD, KVH * HD
    shapes = [("model.embed_tokens.weight", [V, C])]
    for l in range(L):
        p = f"model.layers.{l}."
        shapes += [(p + "input_layernorm.weight", [C]),
                   (p + "self_attn.q_proj.weight", [Q, C]), (p + "self_attn.q_proj.bias", [Q]),
                   (p + "self_attn.k_proj.weight", [KV, C]), (p + "self_attn.k_proj.bias", [KV]),
                   (p + "self_attn.v_proj.weight", [KV, C]), (p + "self_attn.v_proj.bias", [KV]),
                   (p + "self_attn.o_proj.weight", [C, Q]),
                   (p + "post_attention_layernorm.weight", [C]),
                   (p + "mlp.gate_proj.weight", [I, C]), (p + "mlp.up_proj.weight", [I, C]),
                   (p + "mlp.down_proj.weight", [C, I])]
    shapes.append(("model.norm.weight", [C]))
    if not cfg["tied"]:
        shapes.append(("lm_head.weight", [V, C]))
    plan, total = [], 0
    for name, shape in shapes:
        numel = 1
        for d in shape:
            numel *= d
        offset = (total + WEIGHT_ALIGN - 1) // WEIGHT_ALIGN * WEIGHT_ALIGN
        plan.append((name, shape, offset, 2 * numel))
        total = offset + 2 * numel
    return plan, total


class Checkpoint:
    """Name -> (mapped file, dtype, shape, begin, end) over model.safetensors or the shards of an index."""

    def __init__(self, hf_dir):
        self.tensors, self.maps = {}, []
        index = os.path.join(hf_dir, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
            weight_map, files = None, ["model.safetensors"]
        else:
            fail(f"{hf_dir}: holds neither model.safetensors.index.json nor model.safetensors")
        for file in files:
            self.open(os.path.join(hf_dir, file), weight_map)

    def open(self, path, weight_map):
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.maps.append(data)
        if len(data) < 8:
            fail(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", data[:8])
        if n > len(data) - 8:
            fail(f"{path}: header length {n} is larger than the file; truncated: re-download")
        header = json.loads(data[8:8 + n].decode("utf-8"))
        for name, info in header.items():
            if name == "__metadata__" or (weight_map is not None and weight_map.get(name) != os.path.basename(path)):
                continue
            begin, end = info["data_offsets"]
            if 8 + n + end > len(data):
                fail(f"{path}: tensor {name} is truncated (needs {8 + n + end} bytes, file has {len(data)}): re-download")
            self.tensors[name] = (data, info["dtype"], info["shape"], 8 + n + begin, 8 + n + end)


def f32_bits_to_bf16(bits):
    """Round-to-nearest-even of float32 bit patterns to bf16 (NaN kept NaN), as quant/bf16.h's f32_to_bf16."""
    out = array.array("H", bytes(2 * len(bits)))
    for i, u in enumerate(bits):
        if (u & 0x7F800000) == 0x7F800000 and (u & 0x007FFFFF):
            out[i] = (u >> 16) | 0x0040
        else:
            out[i] = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    return out


def to_bf16_bytes(name, dtype, raw):
    """The tensor's bytes as little-endian bf16."""
    if dtype == "BF16":
        return raw
    if dtype == "F32":
        bits = array.array("I", raw)
    elif dtype == "F16":
        count = len(raw) // 2
        # a half is exactly representable as a float, so this pair of conversions is exact
        bits = array.array("I", struct.pack(f"<{count}f", *struct.unpack(f"<{count}e", raw)))
    else:
        fail(f"tensor {name} is {dtype}; expected BF16, F16 or F32 weights")
    if sys.byteorder != "little":
        bits.byteswap()
    out = f32_bits_to_bf16(bits)
    if sys.byteorder != "little":
        out.byteswap()
    return out.tobytes()


def header_bytes(cfg, plan, total):
    ints = [0] * HEADER_INTS
    ints[:17] = [MAGIC, VERSION, cfg["V"], cfg["C"], cfg["I"], cfg["L"], cfg["NH"], cfg["KVH"], cfg["HD"],
                 int(cfg["tied"]), 1, cfg["max_pos"], FORMAT_BF16, len(plan), total & 0xFFFFFFFF, total >> 32,
                 PAYLOAD_OFFSET]
    floats = [0.0] * HEADER_FLOATS
    floats[0], floats[1] = cfg["rope_theta"], cfg["rms_norm_eps"]
    header = struct.pack(f"<{HEADER_INTS}I", *ints) + struct.pack(f"<{HEADER_FLOATS}f", *floats)
    return header + bytes(PAYLOAD_OFFSET - len(header))


def export(hf_dir, out_path):
    cfg = load_config(hf_dir)
    plan, total = weight_plan(cfg)
    checkpoint = Checkpoint(hf_dir)
    tmp_path = out_path + ".tmp"
    try:
        # Written to OUT.tmp and renamed at the end, so an interrupted export never leaves a half file under OUT.
        with open(tmp_path, "wb") as out:
            out.write(header_bytes(cfg, plan, total))
            written = 0
            for i, (name, shape, offset, nbytes) in enumerate(plan):
                if name not in checkpoint.tensors:
                    fail(f"{hf_dir}: tensor {name} is missing (expected shape {shape}); the checkpoint does not match config.json")
                data, dtype, stored_shape, begin, end = checkpoint.tensors[name]
                if list(stored_shape) != shape:
                    fail(f"{hf_dir}: tensor {name} has shape {stored_shape}, expected {shape} from config.json")
                values = to_bf16_bytes(name, dtype, data[begin:end])
                out.write(bytes(offset - written))
                out.write(values)
                written = offset + nbytes
                if len(plan) > 50:
                    sys.stderr.write(f"\rexport_hf.py: tensor {i + 1} of {len(plan)}")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_path, out_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    if len(plan) > 50:
        sys.stderr.write("\n")
    print(f"export_hf.py: wrote {out_path} ({len(plan)} tensors, {PAYLOAD_OFFSET + total} bytes, bf16)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.stderr.write("usage: python3 dev/export_hf.py HF_DIR OUT.bin\n")
        sys.exit(1)
    export(sys.argv[1], sys.argv[2])
