# qwen2_grpo_ref.py: builds tiny Qwen2 models (NF4-dequantized base + PEFT LoRA with non-zero B) with HF transformers, runs TRL's GRPO loss and AdamW on fixed sequences, and dumps everything the CPU backend is tested against.
#
# Run on the GPU machine (torch, transformers >= 5, peft, safetensors):  python3 dev/ref/qwen2_grpo_ref.py OUT_DIR
# For each model in MODELS it writes OUT_DIR/<model>/:
#   hf/            the model as an HF directory (config.json + model.safetensors), linears NF4-dequantized (bf16)
#   hf_orig/       the same model before NF4 (bf16): what `quantize` starts from
#   bnb/           the NF4 model laid out like a bitsandbytes pre-quantized checkpoint (REFERENCE.md §6)
#   adapter/       the LoRA as PEFT saves it (adapter_model.safetensors + adapter_config.json)
#   dump_bf16.safetensors, dump_fp32.safetensors: inputs, logits, log-probs, losses, gradients, AdamW steps,
#                  with the model run in bf16 (what users run) and in fp32 (the same weights, to check the math
#                  without bf16 rounding noise). The metadata "meta" holds the scalars as JSON.
# The GRPO loss follows TRL's GRPOTrainer._compute_loss (REFERENCE.md §5); old log-probs are perturbed so that
# the clipping branches are exercised (as with num_iterations > 1).
import copy
import json
import math
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Qwen2Config, get_cosine_schedule_with_warmup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nf4_ref  # noqa: E402  (the independent NF4 reference)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODELS = {
    # GQA 2:1, HD 16, tied embeddings, plain LoRA scale alpha/r
    "tiny_tied": dict(config=dict(vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
                      lora=dict(r=4, lora_alpha=8, use_rslora=False), seed=1234),
    # GQA 3:1, HD 32, untied lm_head, rsLoRA scale alpha/sqrt(r)
    "tiny_untied": dict(config=dict(vocab_size=320, hidden_size=96, intermediate_size=224, num_hidden_layers=3,
                                    num_attention_heads=3, num_key_value_heads=1, tie_word_embeddings=False),
                        lora=dict(r=8, lora_alpha=16, use_rslora=True), seed=5678),
}
B, T, P = 4, 24, 8              # sequences, tokens per sequence, prompt tokens (the completion is T - P)
MAX_COMPLETION_LENGTH = 20      # dr_grpo divides by B * this, so it differs from T - P on purpose
TEMPERATURE = 0.7
BETA = 0.04                     # larger than TRL's default so the KL term's gradient is visible
EPS_LOW, EPS_HIGH = 0.2, 0.28
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
TRAIN_LOSS_TYPE = "bnpo"        # Unsloth's default; the AdamW steps use it
LR, BETAS, ADAM_EPS, WEIGHT_DECAY, MAX_GRAD_NORM = 5e-3, (0.9, 0.99), 1e-8, 0.1, 0.1
WARMUP_STEPS, TRAINING_STEPS, ADAM_STEPS = 2, 5, 3
# rewards of 2 prompts x G=6 completions, for the advantage formulas (std with Bessel's correction)
REWARDS = [[0.5, 2.75, 0.0, 4.0, 0.5, 1.25], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]


def new_model(cfg, dtype):
    """The model built directly in `dtype`, as from_pretrained(dtype=...) does: a later .to(dtype) would also
    round RoPE's fp32 inv_freq buffer, which users never get."""
    try:
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=dtype)
    except TypeError:
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", torch_dtype=dtype)
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.dtype == torch.float32, inv_freq.dtype
    HD = cfg.hidden_size // cfg.num_attention_heads
    want = 1.0 / (1e6 ** (torch.arange(0, HD, 2, dtype=torch.int64).float() / HD))
    assert torch.equal(inv_freq.cpu(), want), (inv_freq, want)
    return model


def qwen2_config(spec):
    return Qwen2Config(**spec["config"], max_position_embeddings=128, rms_norm_eps=1e-6, hidden_act="silu",
                       use_sliding_window=False, attention_dropout=0.0,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6})


def f32(t):
    return t.detach().float().contiguous().cpu()


def build_base_weights(model, gen):
    """Random weights with the magnitudes of a trained model (so attention is not uniform and the logits are
    peaked, yet small enough that bf16 logits keep some resolution): linears N(0, 1/in), embeddings
    N(0, 0.25^2), norms 1 + N(0, 0.1), biases N(0, 0.1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(0.25 * torch.randn(p.shape, generator=gen))
            elif name == "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def nf4_tables(device):
    code = nf4_ref.tensor_from_f32_bits([nf4_ref.decimal_to_f32_bits(s) for s in nf4_ref.NF4_CODE], device)
    thresholds = nf4_ref.tensor_from_f32_bits([nf4_ref.decimal_to_f32_bits(s) for s in nf4_ref.NF4_THRESHOLDS],
                                              device)
    qmap = nf4_ref.create_dynamic_map("cpu").to(device)
    return code, thresholds, qmap


def quantize_linears(model, device, out_dir):
    """Replaces every linear weight with its NF4 round trip and writes the bitsandbytes-layout checkpoint."""
    code, thresholds, qmap = nf4_tables(device)
    bnb = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            module = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
            if module not in TARGETS:
                bnb[name] = p.detach().to(torch.bfloat16).contiguous().cpu()
                continue
            meta, arrays = nf4_ref.reference_case(name, p.detach().to(torch.bfloat16).cpu(), code, thresholds, qmap,
                                                  device)
            rows, cols = p.shape
            p.copy_(arrays["dequant"].view(rows, cols).to(p.dtype))
            # REFERENCE.md §6: the tensors bitsandbytes' QuantState.as_dict(packed=True) saves per linear
            bnb[name] = arrays["packed"].cpu().view(-1, 1)
            bnb[name + ".absmax"] = arrays["absmax_q"].cpu()
            bnb[name + ".quant_map"] = code.cpu()
            bnb[name + ".nested_absmax"] = arrays["nested_absmax"].cpu()
            bnb[name + ".nested_quant_map"] = qmap.cpu()
            state = {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [rows, cols],
                     "nested_blocksize": 256, "nested_dtype": "float32",
                     "nested_offset": nf4_ref.f32_from_bits(meta["offset_bits"])}
            bnb[name + ".quant_state.bitsandbytes__nf4"] = torch.tensor(list(json.dumps(state).encode()),
                                                                        dtype=torch.uint8)
    if model.config.tie_word_embeddings:
        bnb.pop("lm_head.weight", None)
    os.makedirs(out_dir, exist_ok=True)
    save_file(bnb, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                                  "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                  "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8"}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def make_batch(V, gen):
    """Fixed sequences, completion masks (one full, one stopping early, one short, one truncated and masked
    out entirely), advantages, and old log-prob perturbations."""
    input_ids = torch.randint(0, V, (B, T), generator=gen)
    C = T - P
    mask = torch.zeros(B, C)
    for b, n in enumerate([C, 10, 5, 0]):
        mask[b, :n] = 1.0
    advantages = torch.tensor([0.8, -1.2, 0.45, 0.3])
    old_noise = 0.3 * torch.randn(B, C, generator=gen)
    return input_ids, mask, advantages, old_noise


def per_token_logps(model, input_ids, temperature, hook_store=None):
    """TRL's _get_per_token_logps in fp32: logits / T, log_softmax over V, gather the next token."""
    logits = model(input_ids=input_ids).logits
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = torch.gather(logp_all[:, :-1], 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    return logits, logp


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, loss_type):
    """TRL GRPOTrainer._compute_loss on the completion tokens (REFERENCE.md §5)."""
    per_token_kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
    coef_1 = torch.exp(logp - old_logp)
    coef_2 = torch.clamp(coef_1, 1 - EPS_LOW, 1 + EPS_HIGH)
    loss1 = coef_1 * advantages.unsqueeze(1)
    loss2 = coef_2 * advantages.unsqueeze(1)
    per_token_loss = -torch.min(loss1, loss2) + BETA * per_token_kl
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (mask.size(0) * MAX_COMPLETION_LENGTH)
    if loss_type == "dapo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)  # tokens of the whole (single) batch
    raise ValueError(loss_type)


def advantages_of(rewards, scale):
    """TRL: group mean and std (Bessel) per prompt; scale_rewards group | batch | none; + 1e-4."""
    r = torch.tensor(rewards, dtype=torch.float32)
    mean = r.mean(dim=1, keepdim=True)
    adv = r - mean
    if scale == "group":
        adv = adv / (r.std(dim=1, keepdim=True) + 1e-4)
    elif scale == "batch":
        adv = adv / (r.flatten().std() + 1e-4)
    return adv.flatten()


def lora_params(peft_model):
    """{peft name: parameter} for every lora_A/lora_B, with names like layers.0.self_attn.q_proj.lora_A."""
    out = {}
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            short = name.replace("base_model.model.model.", "").replace(".default.weight", "")
            out[short] = p
    return out


def run_model(name, spec, dtype, base_state, lora_state, out_dir, batch):
    """One full pass in `dtype`: forward with and without LoRA, every loss type, gradients, 3 AdamW steps."""
    torch.manual_seed(0)
    device = "cuda"
    cfg = qwen2_config(spec)
    model = new_model(cfg, dtype)
    missing, unexpected = model.load_state_dict(base_state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model = model.to(device=device)
    lcfg = LoraConfig(**spec["lora"], lora_dropout=0.0, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    params = lora_params(pm)
    with torch.no_grad():
        for k, p in params.items():
            p.data = lora_state[k].to(device=device, dtype=torch.float32).clone()
    for k, p in params.items():
        assert p.dtype == torch.float32, (k, p.dtype)
    input_ids, mask, advantages, old_noise = [t.to(device) for t in batch]

    out = {"input_ids": input_ids.to(torch.int32).cpu(), "completion_mask": mask.cpu(), "advantages": advantages.cpu()}
    pm.eval()
    with torch.no_grad():
        # per-layer hidden states: after the embedding, after each decoder layer, after the final norm
        hidden = []
        hooks = [pm.base_model.model.model.embed_tokens.register_forward_hook(lambda m, i, o: hidden.append(o))]
        for layer in pm.base_model.model.model.layers:
            hooks.append(layer.register_forward_hook(
                lambda m, i, o: hidden.append(o[0] if isinstance(o, tuple) else o)))
        hooks.append(pm.base_model.model.model.norm.register_forward_hook(lambda m, i, o: hidden.append(o)))
        logits, logp_t1 = per_token_logps(pm, input_ids, 1.0)
        for h in hooks:
            h.remove()
        out["hidden_states"] = torch.stack([f32(h) for h in hidden])  # [L+2, B, T, C]
        out["logits"] = f32(logits)                                   # [B, T, V]
        out["logp_t1_lora"] = f32(logp_t1)                            # [B, T-1], temperature 1
        with pm.disable_adapter():
            base_logits, base_logp_t1 = per_token_logps(pm, input_ids, 1.0)
            out["logits_base"] = f32(base_logits)
            out["logp_t1_base"] = f32(base_logp_t1)
            _, ref_full = per_token_logps(pm, input_ids, TEMPERATURE)
    ref_logp = ref_full[:, P - 1:].detach()
    out["ref_logp"] = f32(ref_logp)

    meta = {"model": name, "dtype": str(dtype).replace("torch.", ""), "B": B, "T": T, "P": P,
            "temperature": TEMPERATURE, "beta": BETA, "epsilon_low": EPS_LOW, "epsilon_high": EPS_HIGH,
            "max_completion_length": MAX_COMPLETION_LENGTH, "loss_types": LOSS_TYPES,
            "train_loss_type": TRAIN_LOSS_TYPE, "lora": spec["lora"], "lr": LR, "betas": list(BETAS),
            "adam_eps": ADAM_EPS, "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM,
            "warmup_steps": WARMUP_STEPS, "training_steps": TRAINING_STEPS, "adam_steps": ADAM_STEPS,
            "hidden_states": "index 0: embeddings, 1..L: after each decoder layer, L+1: after the final norm",
            "logp_layout": "[B, T-1]: log p(token t+1 | tokens 0..t); completion log-probs are [:, P-1:]",
            "losses": {}}

    # every loss type from the same log-probs, with its gradient with respect to the per-token log-probs
    pm.train()
    for loss_type in LOSS_TYPES:
        pm.zero_grad(set_to_none=True)
        _, logp_full = per_token_logps(pm, input_ids, TEMPERATURE)
        logp = logp_full[:, P - 1:]
        logp.retain_grad()
        old_logp = (logp.detach() + old_noise) if loss_type == LOSS_TYPES[0] else out["old_logp"].to(device)
        if loss_type == LOSS_TYPES[0]:
            out["logp"] = f32(logp)
            out["old_logp"] = f32(old_logp)
        loss = grpo_loss(logp, old_logp, ref_logp, advantages, mask, loss_type)
        loss.backward()
        meta["losses"][loss_type] = loss.item()
        out[f"dloss_dlogp.{loss_type}"] = f32(logp.grad)
        if loss_type == TRAIN_LOSS_TYPE:
            for k, p in params.items():
                out[f"grad.{k}"] = f32(p.grad)

    # TRL's KL and clip metrics are not needed; the advantages from rewards are
    for scale in ["group", "batch", "none"]:
        out[f"advantages_from_rewards.{scale}"] = advantages_of(REWARDS, scale)
    out["rewards"] = torch.tensor(REWARDS, dtype=torch.float32)

    # three AdamW steps with global grad-norm clipping and a cosine schedule with warmup, as the HF Trainer does
    opt = torch.optim.AdamW(list(params.values()), lr=LR, betas=BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY)
    sched = get_cosine_schedule_with_warmup(opt, WARMUP_STEPS, TRAINING_STEPS)
    for k, p in params.items():
        out[f"step0.{k}"] = f32(p)
    meta["steps"] = []
    old_logp = out["old_logp"].to(device)
    for step in range(1, ADAM_STEPS + 1):
        opt.zero_grad(set_to_none=True)
        _, logp_full = per_token_logps(pm, input_ids, TEMPERATURE)
        loss = grpo_loss(logp_full[:, P - 1:], old_logp, ref_logp, advantages, mask, TRAIN_LOSS_TYPE)
        loss.backward()
        for k, p in params.items():
            out[f"step{step}_grad.{k}"] = f32(p.grad)
        grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_GRAD_NORM)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        for k, p in params.items():
            out[f"step{step}.{k}"] = f32(p)
        meta["steps"].append({"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(), "lr": lr})

    path = os.path.join(out_dir, f"dump_{meta['dtype']}.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path, metadata={"meta": json.dumps(meta)})
    print(f"{name} {meta['dtype']}: losses {meta['losses']}, steps {meta['steps']}")
    return pm


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python3 dev/ref/qwen2_grpo_ref.py OUT_DIR")
    import peft
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    root = sys.argv[1]
    for name, spec in MODELS.items():
        out_dir = os.path.join(root, name)
        os.makedirs(out_dir, exist_ok=True)
        gen = torch.Generator().manual_seed(spec["seed"])
        cfg = qwen2_config(spec)
        model = new_model(cfg, torch.bfloat16)
        build_base_weights(model, gen)
        if cfg.tie_word_embeddings:
            model.tie_weights()
        model.save_pretrained(os.path.join(out_dir, "hf_orig"))
        quantize_linears(model, "cuda", os.path.join(out_dir, "bnb"))
        model.save_pretrained(os.path.join(out_dir, "hf"))
        base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        print(f"{name}: config {json.dumps(model.config.to_dict(), default=str)[:400]}")

        # LoRA: PEFT's own initialisation of A (kaiming-uniform, bound 1/sqrt(in)), then a non-zero B
        lcfg = LoraConfig(**spec["lora"], lora_dropout=0.0, target_modules=TARGETS, bias="none",
                          task_type="CAUSAL_LM")
        init_model = copy.deepcopy(model).float()
        torch.manual_seed(spec["seed"])  # PEFT draws A from torch's global generator
        pm = get_peft_model(init_model, lcfg)
        with torch.no_grad():
            for k, p in lora_params(pm).items():
                if "lora_B" in k:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        lora_state = {k: p.detach().float().clone() for k, p in lora_params(pm).items()}
        pm.save_pretrained(os.path.join(out_dir, "adapter"))

        batch = make_batch(cfg.vocab_size, gen)
        for dtype in (torch.bfloat16, torch.float32):
            run_model(name, spec, dtype, base_state, lora_state, out_dir, batch)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    print(f"wrote {total} bytes under {root}")


if __name__ == "__main__":
    main()
