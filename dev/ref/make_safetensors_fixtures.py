#!/usr/bin/env python3
# make_safetensors_fixtures.py: safetensors / config.json test fixtures written with the stdlib alone, independently of the C++ code.
#
#   python3 dev/ref/make_safetensors_fixtures.py DIR          writes every fixture under DIR
#   python3 dev/ref/make_safetensors_fixtures.py --describe F  re-reads F with struct/json, checks it the way the
#                                                             Rust safetensors library does, prints a checksum listing
#
# Tensor values come from one formula the C++ tests recompute (see value_code): for element i of tensor NAME,
#   code = (i * 31 + seed) % 251 with seed = sum(NAME's UTF-8 bytes) % 251,
#   floats hold (code - 125) / 128 (exact in bf16 and fp16), signed ints code - 125, U8 code itself.
import json
import os
import struct
import sys

# The Rust library's Dtype declaration order (its writer sorts by this, descending, then by name).
DTYPE_ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16",
               "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
            "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "C64": 8, "F64": 8, "I64": 8, "U64": 8}


def value_code(name, i):
    seed = sum(name.encode("utf-8")) % 251
    return (i * 31 + seed) % 251


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def encode(name, dtype, shape):
    """The formula's values for one tensor, as little-endian bytes."""
    out = bytearray()
    for i in range(numel(shape)):
        code = value_code(name, i)
        x = (code - 125) / 128.0
        if dtype == "F32":
            out += struct.pack("<f", x)
        elif dtype == "F64":
            out += struct.pack("<d", x)
        elif dtype == "F16":
            out += struct.pack("<e", x)
        elif dtype == "BF16":
            bits = struct.unpack("<I", struct.pack("<f", x))[0]
            assert bits & 0xFFFF == 0, "formula values must be exact in bf16"
            out += struct.pack("<H", bits >> 16)
        elif dtype == "I64":
            out += struct.pack("<q", code - 125)
        elif dtype == "I32":
            out += struct.pack("<i", code - 125)
        elif dtype == "I16":
            out += struct.pack("<h", code - 125)
        elif dtype == "U8":
            out += struct.pack("<B", code)
        else:
            raise ValueError(dtype)
    return bytes(out)


def pad_header(text):
    raw = text.encode("utf-8")
    return raw + b" " * ((8 - len(raw) % 8) % 8)


def write_raw(path, header_bytes, data, declared_length=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = len(header_bytes) if declared_length is None else declared_length
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + header_bytes + data)


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape) in the order to lay out (deliberately not the library's order,
    so the reader is tested on files it did not write). Values from the formula."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = bytearray()
    for name, dtype, shape in tensors:
        raw = encode(name, dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    write_raw(path, pad_header(json.dumps(header, separators=(",", ":"), ensure_ascii=False)), bytes(data))
    return len(data)


def write_sharded(directory, shards, index_extra=None, unlisted=None):
    """shards: list of tensor lists, one per shard file. unlisted: tensors put in the last shard but left out
    of the index. index_extra: {tensor: file} entries added to the weight map (to break it)."""
    weight_map = {}
    total = 0
    count = len(shards)
    for k, tensors in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (k + 1, count)
        extra = unlisted if (unlisted and k == count - 1) else []
        total += write_safetensors(os.path.join(directory, fname), tensors + extra, {"format": "pt"})
        for name, _, _ in tensors:
            weight_map[name] = fname
    weight_map.update(index_extra or {})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


# ---- Qwen2 -------------------------------------------------------------------------------------

TINY = dict(V=512, C=64, I=128, L=2, NH=4, KVH=2, HD=16)


def qwen2_tensors(V, C, I, L, NH, KVH, HD, tied):
    """The tensor list of an HF Qwen2 checkpoint, written out here independently of model/config.cpp."""
    t = [("model.embed_tokens.weight", "BF16", [V, C])]
    for l in range(L):
        p = "model.layers.%d." % l
        t += [(p + "input_layernorm.weight", "BF16", [C]),
              (p + "post_attention_layernorm.weight", "BF16", [C])]
        for proj, rows in (("q", NH * HD), ("k", KVH * HD), ("v", KVH * HD)):
            t += [(p + "self_attn.%s_proj.weight" % proj, "BF16", [rows, C]),
                  (p + "self_attn.%s_proj.bias" % proj, "BF16", [rows])]
        t += [(p + "self_attn.o_proj.weight", "BF16", [C, NH * HD]),
              (p + "mlp.gate_proj.weight", "BF16", [I, C]),
              (p + "mlp.up_proj.weight", "BF16", [I, C]),
              (p + "mlp.down_proj.weight", "BF16", [C, I])]
    t.append(("model.norm.weight", "BF16", [C]))
    if not tied:
        t.append(("lm_head.weight", "BF16", [V, C]))
    return t


def qwen2_config(V, C, I, L, NH, KVH, HD, tied, transformers5):
    cfg = {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": C, "initializer_range": 0.02,
        "intermediate_size": I, "max_position_embeddings": 32768, "max_window_layers": L, "model_type": "qwen2",
        "num_attention_heads": NH, "num_hidden_layers": L, "num_key_value_heads": KVH, "rms_norm_eps": 1e-06,
        "sliding_window": 32768, "tie_word_embeddings": tied, "use_cache": True, "use_sliding_window": False,
        "vocab_size": V,
    }
    if transformers5:  # transformers >= 5: rope_parameters and dtype
        cfg["rope_parameters"] = {"rope_theta": 1000000.0, "rope_type": "default"}
        cfg["dtype"] = "bfloat16"
        cfg["transformers_version"] = "5.0.0"
    else:
        cfg["rope_theta"] = 1000000.0
        cfg["rope_scaling"] = None
        cfg["torch_dtype"] = "bfloat16"
        cfg["transformers_version"] = "4.43.1"
    return cfg


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def make_all(root):
    # A valid single file: several dtypes, a scalar, a zero-size tensor, an odd-sized U8 that leaves the
    # tensors after it unaligned, metadata with escapes and non-ASCII text.
    write_safetensors(os.path.join(root, "valid.safetensors"), [
        ("embed.weight", "BF16", [4, 6]),
        ("mask", "U8", [7]),
        ("norm.weight", "F32", [6]),
        ("half", "F16", [3, 2]),
        ("ids", "I64", [5]),
        ("count", "I32", [2, 2]),
        ("scalar", "F64", []),
        ("empty", "F32", [0, 3]),
    ], {"format": "pt", "note": "fixture \"quoted\" caf\u00e9"})

    # Sharded: two shards plus an index; shard 2 also holds a tensor the index does not list.
    write_sharded(os.path.join(root, "sharded"),
                  [[("a.weight", "BF16", [2, 3]), ("b.bias", "F32", [3])], [("c.weight", "BF16", [4, 2])]],
                  unlisted=[("unlisted.weight", "F32", [2])])

    # Tiny Qwen2 HF directories: tied / transformers-5 config / single file, and untied / 4.x config / sharded.
    tied = qwen2_tensors(tied=True, **TINY)
    write_json(os.path.join(root, "qwen_tiny", "config.json"), qwen2_config(tied=True, transformers5=True, **TINY))
    write_safetensors(os.path.join(root, "qwen_tiny", "model.safetensors"), tied, {"format": "pt"})
    untied = qwen2_tensors(tied=False, **TINY)
    write_json(os.path.join(root, "qwen_tiny_untied", "config.json"), qwen2_config(tied=False, transformers5=False, **TINY))
    write_sharded(os.path.join(root, "qwen_tiny_untied"), [untied[: len(untied) // 2], untied[len(untied) // 2:]])

    # The published Qwen2.5 configs (values as on the HF hub), to check the presets against.
    for name, V, C, I, L, NH, KVH, tie, window in (("qwen2.5-0.5b-instruct", 151936, 896, 4864, 24, 14, 2, True, 32768),
                                                   ("qwen2.5-7b-instruct", 152064, 3584, 18944, 28, 28, 4, False, 131072)):
        cfg = qwen2_config(V, C, I, L, NH, KVH, C // NH, tie, transformers5=False)
        cfg["sliding_window"] = window
        cfg["max_window_layers"] = 21 if L == 24 else 28
        write_json(os.path.join(root, "configs", name, "config.json"), cfg)

    # ---- broken files -----------------------------------------------------------------------------
    broken = os.path.join(root, "broken")
    up = "model.layers.0.mlp.up_proj.weight"
    write_safetensors(os.path.join(broken, "truncated.safetensors"), [("model.norm.weight", "F32", [4]), (up, "BF16", [8, 4])])
    with open(os.path.join(broken, "truncated.safetensors"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) - 10)
    write_raw(os.path.join(broken, "header_past_eof.safetensors"), pad_header('{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'),
              b"\0" * 4, declared_length=1000000)
    write_raw(os.path.join(broken, "bad_json.safetensors"), pad_header('{"x":{"dtype":"F32",'), b"")
    write_raw(os.path.join(broken, "not_object.safetensors"), pad_header("[1, 2, 3]"), b"")
    write_raw(os.path.join(broken, "shape_mismatch.safetensors"),
              pad_header(json.dumps({"model.layers.3.mlp.up_proj.weight": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, 40]}})),
              b"\0" * 40)
    write_raw(os.path.join(broken, "unknown_dtype.safetensors"),
              pad_header(json.dumps({"model.embed_tokens.weight": {"dtype": "Q4_K", "shape": [2, 2], "data_offsets": [0, 4]}})),
              b"\0" * 4)
    write_raw(os.path.join(broken, "overlap.safetensors"),
              pad_header(json.dumps({"first.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                     "second.weight": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})),
              b"\0" * 24)
    with open(os.path.join(broken, "too_small.safetensors"), "wb") as f:
        f.write(b"\x05\0\0\0\0")
    open(os.path.join(broken, "empty.safetensors"), "wb").close()
    # The index puts "lost.weight" in shard 2, which does not hold it.
    write_sharded(os.path.join(broken, "missing_in_shard"),
                  [[("a.weight", "BF16", [2, 3])], [("c.weight", "BF16", [4, 2])]],
                  index_extra={"lost.weight": "model-00002-of-00002.safetensors"})
    # Tiny Qwen2 checkpoints that are valid safetensors but wrong for the config.
    transposed = [(n, d, [128, 64] if n == "model.layers.1.mlp.down_proj.weight" else s) for n, d, s in tied]
    assert transposed != tied
    write_json(os.path.join(broken, "qwen_tiny_badshape", "config.json"), qwen2_config(tied=True, transformers5=True, **TINY))
    write_safetensors(os.path.join(broken, "qwen_tiny_badshape", "model.safetensors"), transposed)
    missing = [t for t in tied if t[0] != "model.layers.1.self_attn.k_proj.bias"]
    write_json(os.path.join(broken, "qwen_tiny_missing", "config.json"), qwen2_config(tied=True, transformers5=True, **TINY))
    write_safetensors(os.path.join(broken, "qwen_tiny_missing", "model.safetensors"), missing)


# ---- --describe: an independent reader for files the C++ writer produced ------------------------------

def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def describe(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    raw = blob[8:8 + n]
    header = json.loads(raw.decode("utf-8"))
    text = raw.decode("utf-8")
    # The library's rule: compact JSON, then spaces up to a multiple of 8.
    padding_ok = n % 8 == 0 and len(text) - len(text.rstrip(" ")) < 8 and text.rstrip(" ").endswith("}")
    metadata = header.pop("__metadata__", {})
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"])
    expected_order = sorted(header, key=lambda name: (-DTYPE_ORDER.index(header[name]["dtype"]), name.encode("utf-8")))
    order_ok = [name for name, _ in entries] == expected_order
    data = blob[8 + n:]
    # The library's reader: offsets tile the data section from 0 with no gap, and the file ends with the last tensor.
    position = 0
    strict_ok = True
    for name, info in entries:
        begin, end = info["data_offsets"]
        strict_ok &= begin == position and end - begin == numel(info["shape"]) * ITEMSIZE[info["dtype"]]
        position = end
    strict_ok &= position == len(data)
    lines = ["padding_ok %d" % padding_ok, "order_ok %d" % order_ok, "strict_ok %d" % strict_ok]
    lines += ["metadata %s=%s" % (k, metadata[k]) for k in sorted(metadata)]
    for name in sorted(header):
        info = header[name]
        begin, end = info["data_offsets"]
        lines.append("tensor %s %s [%s] %016x" % (name, info["dtype"], ",".join(str(d) for d in info["shape"]),
                                                  fnv1a64(data[begin:end])))
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--describe":
        describe(sys.argv[2])
    elif len(sys.argv) == 2:
        make_all(sys.argv[1])
    else:
        sys.exit("usage: make_safetensors_fixtures.py DIR | --describe FILE")
