# rewards_oracle.py: the five GSM8K rewards computed by python3 itself (stdlib re and str), the answers the C++ rewards must equal bit for bit.
# Usage: python3 dev/oracle/rewards_oracle.py OUT_DIR   (the Makefile's build/oracle/rewards.stamp rule)
# Writes OUT_DIR/rewards.jsonl, one line per corpus item:
#   {"completion", "answer", "extracted", "xmlcount", "soft_format", "strict_format", "int", "correctness",
#    "total", "facts": [names of the facts that hold], "strip_edge_spaces": [code points], "soft_gap_spaces": [code points]}
# and OUT_DIR/rewards_unicode.json: python3's isspace set and isdigit ranges, to check the C++ tables.
# Floats are written by json (float repr), which round-trips to the same double.
import json
import os
import re
import sys
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_reward_corpus import build_corpus  # noqa: E402


# ---- the reward functions, as in Unsloth's Qwen2.5 (3B) GRPO notebook, on one completion each ----
def extract_xml_answer(text: str) -> str:
    answer = text.split("<answer>")[-1]
    answer = answer.split("</answer>")[0]
    return answer.strip()


def correctness_reward(completion, answer):
    return 2.0 if extract_xml_answer(completion) == answer else 0.0


def int_reward(completion, answer):
    return 0.5 if extract_xml_answer(completion).isdigit() else 0.0


STRICT_PATTERN = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
SOFT_PATTERN = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"


def strict_format_reward(completion, answer):
    return 0.5 if re.match(STRICT_PATTERN, completion) else 0.0


def soft_format_reward(completion, answer):
    return 0.5 if re.match(SOFT_PATTERN, completion) else 0.0


def count_xml(text) -> float:
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return count


def xmlcount_reward(completion, answer):
    return count_xml(completion)


# The notebook's reward_funcs order; the total adds weight * reward in this order.
REWARDS = [("xmlcount", 1.0, xmlcount_reward), ("soft_format", 1.0, soft_format_reward),
           ("strict_format", 1.0, strict_format_reward), ("int", 1.0, int_reward),
           ("correctness", 1.0, correctness_reward)]


# ---- facts about each item, so the C++ test can insist that the corpus reaches every branch ----
# (strict and soft never both match: strict needs a '\n' right after <reasoning>, which soft's .*? cannot cross.)
def facts(c, a):
    raw = c.split("<answer>")[-1].split("</answer>")[0]
    extracted = raw.strip()
    xml_tail = c.split("\n</answer>\n")[-1]
    close_tail = c.split("\n</answer>")[-1]
    return {
        "xml_reasoning_open_once": c.count("<reasoning>\n") == 1,
        "xml_reasoning_close_once": c.count("\n</reasoning>\n") == 1,
        "xml_answer_open_once": c.count("\n<answer>\n") == 1,
        "xml_answer_close_once": c.count("\n</answer>") == 1,
        "xml_answer_open_twice": c.count("\n<answer>\n") >= 2,
        "xml_answer_open_tail_penalty": c.count("\n<answer>\n") == 1 and len(xml_tail) > 0,
        "xml_answer_close_tail_bonus": c.count("\n</answer>") == 1 and len(close_tail) == 0,
        "xml_answer_close_tail_penalty": c.count("\n</answer>") == 1 and len(close_tail) > 1,
        "xml_tail_multibyte": (c.count("\n<answer>\n") == 1 and not xml_tail.isascii())
                              or (c.count("\n</answer>") == 1 and not close_tail.isascii()),
        "xml_negative": count_xml(c) < 0,
        "no_answer_open": "<answer>" not in c,
        "several_answer_opens": c.count("<answer>") > 1,
        "no_answer_close_after_last_open": "</answer>" not in c.split("<answer>")[-1],
        "extract_stripped": raw != extracted,
        "extract_empty": extracted == "",
        "extract_keeps_lookalike_space": any(ch in extracted[:1] + extracted[-1:] for ch in "\u200b\ufeff\u180e\u2060\u00ad"),
        "correct_after_strip": extracted == a and raw != a,
        "int_non_ascii": extracted.isdigit() and not extracted.isascii(),
        "numeric_not_digit": extracted != "" and extracted.isnumeric() and not extracted.isdigit(),
        "strict_needs_dotall": bool(re.match(STRICT_PATTERN, c, re.DOTALL)) and not re.match(STRICT_PATTERN, c),
        "strict_final_newline_before_dollar": bool(re.match(STRICT_PATTERN, c)) and c.endswith("</answer>\n\n"),
        "strict_ends_one_newline": bool(re.match(STRICT_PATTERN, c)) and c.endswith("</answer>\n")
                                   and not c.endswith("</answer>\n\n"),
        "strict_fails_extra_newline": c.endswith("</answer>\n\n\n") and bool(re.match(STRICT_PATTERN, c[:-1])),
        "soft_needs_dotall": bool(re.match(SOFT_PATTERN, c, re.DOTALL)) and not re.match(SOFT_PATTERN, c),
        "soft_not_at_start": not re.match(SOFT_PATTERN, c) and bool(re.search(SOFT_PATTERN, c)),
        "soft_gap_has_newline": bool(re.match(r"<reasoning>.*?</reasoning>(\s*)<answer>.*?</answer>", c))
                                and "\n" in re.match(r"<reasoning>.*?</reasoning>(\s*)<answer>.*?</answer>", c).group(1),
        "crlf": "\r\n" in c,
        "astral": any(ord(ch) > 0xFFFF for ch in c),
        "length_differs_from_bytes": len(c) != len(c.encode("utf-8")),
        "ends_with_tag": c.endswith(("</answer>", "<answer>", "</reasoning>", "<reasoning>")),
        "empty_completion": c == "",
    }


def spaces_of(text):
    return sorted({ord(ch) for ch in text if ch.isspace()})


def oracle_line(item):
    c, a = item["completion"], item["answer"]
    out = {"completion": c, "answer": a, "extracted": extract_xml_answer(c)}
    total = 0.0
    for name, weight, fn in REWARDS:
        value = fn(c, a)
        out[name] = value
        total += weight * value
    out["total"] = total
    out["facts"] = [name for name, holds in facts(c, a).items() if holds]  # only the true ones: smaller files
    raw = c.split("<answer>")[-1].split("</answer>")[0]
    stripped = raw.strip()
    edges = raw[: len(raw) - len(raw.lstrip())] + raw[len(raw.rstrip()):] if stripped else raw
    out["strip_edge_spaces"] = spaces_of(edges)
    gap = re.match(r"<reasoning>.*?</reasoning>(\s*)<answer>.*?</answer>", c)
    out["soft_gap_spaces"] = spaces_of(gap.group(1)) if gap else []
    return out


def digit_ranges():
    ranges = []
    for cp in range(0x110000):
        if chr(cp).isdigit():
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
    return ranges


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python3 dev/oracle/rewards_oracle.py OUT_DIR")
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    corpus = build_corpus()
    with open(os.path.join(out_dir, "rewards.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for item in corpus:
            f.write(json.dumps(oracle_line(item), ensure_ascii=False) + "\n")
    unicode_info = {
        "unidata_version": unicodedata.unidata_version,
        "python": sys.version.split()[0],
        "isspace": [cp for cp in range(0x110000) if chr(cp).isspace()],
        "isdigit_ranges": digit_ranges(),
    }
    with open(os.path.join(out_dir, "rewards_unicode.json"), "w", encoding="utf-8") as f:
        json.dump(unicode_info, f)
    print("rewards oracle: %d items -> %s" % (len(corpus), out_dir))


if __name__ == "__main__":
    main()
