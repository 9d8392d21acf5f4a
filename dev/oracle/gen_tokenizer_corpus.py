# gen_tokenizer_corpus.py: writes test/corpus/tokenizer_adversarial.jsonl, the texts that try to break the tokenizer (deterministic).
#
# Usage (from the repository root):  python3 dev/oracle/gen_tokenizer_corpus.py
# One JSON string per line, ASCII-escaped so that no raw U+2028 / U+0085 in the file can split a line.
# The oracle (dev/oracle/tokenizer_oracle.js) encodes every line; test/test_tokenizer.cpp compares.
import json
import os
import random

OUT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "test", "corpus", "tokenizer_adversarial.jsonl"))

# Characters that are whitespace somewhere: JS \s (the oracle), Python isspace, Rust/Unicode White_Space.
# \x85 is White_Space but not JS \s; \ufeff is JS \s but not White_Space; \x1c-\x1f are only Python's;
# \u200b (zero width space) is nobody's whitespace, though it looks like one.
SPACES = [" ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u1680", "\u2000",
          "\u2007", "\u200a", "\u200b", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\ufeff"]
CONTRACTIONS = ["s", "t", "re", "ve", "m", "ll", "d"]
NFD_TEXTS = [
    "e\u0301", "Cafe\u0301 de\u0301ja\u0300 vu", "a\u0301\u0323", "a\u0323\u0301", "q\u0307\u0323", "q\u0323\u0307",
    "o\u0308\u0301\u0323\u0328", "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u1173\u11af", "\u1100\u1161",
    "\uac00\u11a8", "\u212b", "\u2126", "\u0344", "\u0958", "\u1e9b\u0323", "\u1f80", "\u03b1\u0313\u0345\u0301",
    "Vie\u0323\u0302t Nam", "\u05e9\u05c1\u05bc", "\u05e9\u05bc\u05c1", "A\u030a\u0301", "\u00c5\u0301",
    "n\u0303\u0303\u0303", "\u0061\u0315\u0300\u05ae\u0300\u0062", "\u0915\u093c", "\u0b47\u0b3e", "\u0dd9\u0dcf\u0dca",
    "\u1b05\u1b35", "\U000110a5\U000110ba", "\U00011131\U00011127", "\u0f71\u0f72\u0f74", "\u0f40\u0fb5",
    "\u3099\u304b", "\u304b\u3099", "\u30cf\u309a", "\uff8a\uff9f", "\u0041\u030a\u0327", "\u0041\u0327\u030a",
    "\u1e0b\u0323", "d\u0323\u0307", "\u0301abc", "\u0301", "\u0301\u0301\u0301", "\u00e9\u0301",
]
EMOJI = ["\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466", "\U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5",
         "\U0001f44d\U0001f3fd", "1\ufe0f\u20e3", "\u2764\ufe0f", "\U0001f3f3\ufe0f\u200d\U0001f308",
         "\U0001f9d1\U0001f3ff\u200d\U0001f4bb", "\U0001f600\U0001f601\U0001f602", "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
         "\u263a", "\U0001fae8", "\U0001f1e6"]
SCRIPTS = ["\u4f60\u597d\uff0c\u4e16\u754c\u3002", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3001\u30ab\u30bf\u30ab\u30ca",
           "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", "\u300c\u5f15\u7528\u300d\u3010\u62ec\u5f27\u3011",
           "\uff21\uff22\uff23\uff11\uff12\uff13", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
           "\u0627\u0644\u0633\u0651\u064e\u0644\u0627\u0645\u064f \u0639\u064e\u0644\u064e\u064a\u0652\u0643\u064f\u0645\u0652",
           "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd \u05e2\u05d5\u05dc\u05dd", "\u200f\u05e2\u05d1\u05e8\u05d9\u05ea\u200e abc",
           "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a",
           "\u0bb5\u0ba3\u0b95\u0bcd\u0b95\u0bae\u0bcd", "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439, \u043c\u0438\u0440!",
           "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5", "\u10d2\u10d0\u10db\u10d0\u10e0\u10ef\u10dd\u10d1\u10d0",
           "\u1203\u1208\u121d", "\u13a0\u13a1\u13a2", "\U00020000\U0002a6d6\U0003134a", "\u2f00\u2e80", "\ua000\ua001",
           "Stra\u00dfe \u0130stanbul \u0131 \ufb01 \u017f"]
NUMBERS = ["1234567890", "3.14159", "1,000,000", "-42", "+7e10", "0x1F", "\u0661\u0662\u0663", "\u00bd\u00bc\u2153",
           "\u00b2\u00b3\u00b9", "\u2160\u216b\u2180", "\uff11\uff12\uff13", "\u0967\u0968\u0969", "abc123def456",
           "$1,234.56", "12:30pm", "2+2=4", "10%", "1st 2nd 3rd 4th", "\U0001d7ce\U0001d7d8", "\u2460\u2461\u2473", "\U00010107"]
ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
         "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
         "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
         "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
PARTIAL_ADDED = ["<|im_start", "<|im_start|", "im_start|>", "|im_end|>", "<|im_end|>>", "<<|im_end|>", "<|IM_END|>",
                 "<| im_end |>", "<tool_call", "</tool_call", "<tool_call/>", "< tool_call>", "<|endoftext", "<|end|>",
                 "<|", "|>", "<", "<|<|im_end|>|>", "<|im_end|<|im_end|>"]
PUNCTUATION = [chr(c) for c in range(0x21, 0x7f) if not chr(c).isalnum()] + [
    "\u2026", "\u2014", "\u2013", "\u201c", "\u201d", "\u2018", "\u2019", "\u00bf", "\u00a1", "\u00ab", "\u00bb", "\u00b7",
    "\u3002", "\u3001", "\uff01", "\u060c", "\u061f", "\u0964", "\u00a7", "\u00b6", "\u2022", "\u20ac", "\u00a3", "\u00a5",
    "\u2192", "\u221e", "\u2211", "\u00d7", "\u00f7", "\u00b1", "\u2260", "\u00b0", "\u2122", "\u00a9", "\u00ae"]
CONTROLS = [chr(c) for c in list(range(0x00, 0x20)) + [0x7f] + list(range(0x80, 0xa0))] + [
    "\u00ad", "\u200c", "\u200d", "\u200e", "\u2060", "\u2066", "\u2069", "\ufff9", "\ufffc", "\ufffd", "\ue000",
    "\U000f0000", "\U000e0001", "\ufdd0", "\uffff", "\U0010ffff"]
# Ordinary English, where the order of competing merges ("e r" / "r e", "i n" / "n g") decides the tokens.
PROSE = ["There were three hundred eager readers here; they're reading other stories together.",
         "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!",
         "Interestingly, the engineering department's refrigerator wasn't working; nevertheless, everyone persevered.",
         "If Jerry buys 3 apples for $0.75 each and 2 pears for $1.20 each, how much does he spend in total?",
         "She said: \"I'll be there at 10:30 a.m.\" -- but she wasn't; we'd already left.\n\nP.S. Don't worry."]
WORDS = ["Hello", "world", "the", "The", "GSM8K", "answer", "don't", "I'm", "x", "\u00e9t\u00e9", "na\u00efve", "Zo\u00eb"]


def whitespace_texts():
    out = []
    for w in SPACES:
        for n in (1, 2, 3):
            run = w * n
            out += ["a" + run + "b", run, "a" + run, run + "a", "a" + run + "\nb", "a " + run + "!", "x" + run + "1",
                    run + "\n", "\n" + run, "a" + run + " b", "a" + run + "\r\nb", "." + run + ".", "a" + run + "<|im_end|>"]
    out += [" " * n for n in range(1, 9)] + ["\t" * 5, "\n" * 5, "\r\n" * 4, "\r" * 3, " \t \n \r\n \r ", "a \n\n  b",
            "trailing   ", "trailing\t", "trailing \n", "   leading", "\n\nleading", "a\u00a0\u00a0b", "a \u3000 b",
            "line1\r\nline2\r\n", "a\r\n\r\nb", " \r\n ", "\r\n\r\n", "x\r\r\ny", "x\n\r\ny", "  \n  \n  x"]
    rng = random.Random(1)
    for _ in range(150):
        out.append("".join(rng.choice(SPACES + ["a", "1", ".", "\u4f60"]) for _ in range(rng.randint(1, 12))))
    return out


def contraction_texts():
    out = []
    for c in CONTRACTIONS:
        for variant in dict.fromkeys([c, c.upper(), c.capitalize(), c[:-1] + c[-1].upper()]):  # ordered, unlike a set
            out += ["I'" + variant, "'" + variant, " '" + variant, "x'" + variant + "y", "'" + variant + "'" + variant,
                    "1'" + variant, "'" + variant + " ok"]
    out += ["DON'T", "He'S", "'LL", "we'Ve", "THEY'RE", "you'D", "it's", "It'S", "'", "''", "'''s", "'x", "'l", "'r",
            "'v", "' s", "\u2019s", "don\u2019t", "'\u017f", "'\u017ft", "'\u212a", "'\u212aa", "O'Neil's", "rock'n'roll",
            "'s'", "''ll", "'1", "'\u00e9"]
    return out


def long_texts():
    rng = random.Random(2)
    letters = "abcdefghijklmnopqrstuvwxyz\u00e9\u00df\u0434"
    return ["a" * 3000, "ab" * 1500, "".join(rng.choice(letters) for _ in range(3000)), "7" * 3000,
            "".join(rng.choice("0123456789") for _ in range(3000)), "!" * 3000,
            "".join(rng.choice("!@#$%^&*()-_=+[]{};:,.<>/?|") for _ in range(3000)), " " * 3000, "\n" * 3000,
            "e\u0301" * 1500, "\u00e9" * 3000, "\u4f60" * 3000, "\U0001f600" * 1000, "<|im_end|>" * 300,
            "a\u0301" + "\u0323\u0301" * 1500, " " + "x" * 3000 + " ", "".join(rng.choice("aA1!. \n") for _ in range(3000))]


def mixes(atoms, count, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        out.append("".join(rng.choice(atoms) for _ in range(rng.randint(1, 20))))
    return out


def main():
    texts = ["Hello, world! 123 \u4f60\u597d", ""]  # the README example first; the empty text encodes to []
    texts += PROSE + [p.lower() for p in PROSE] + [p.upper() for p in PROSE]
    texts += whitespace_texts()
    texts += contraction_texts()
    texts += NUMBERS + [n + " " + n for n in NUMBERS] + ["x" + n for n in NUMBERS]
    texts += NFD_TEXTS + [" " + t for t in NFD_TEXTS] + ["x" + t + "y" for t in NFD_TEXTS]
    texts += EMOJI + ["I " + e + " it" for e in EMOJI] + ["".join(EMOJI)]
    texts += SCRIPTS + [" ".join(SCRIPTS)]
    texts += ADDED + PARTIAL_ADDED + ["".join(ADDED), " ".join(ADDED)]
    texts += ["a" + t + "b" for t in ADDED + PARTIAL_ADDED] + [" " + t + " " for t in ADDED] + ["\n" + t + "\n" for t in ADDED]
    texts += ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
              "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "<|endoftext|><|endoftext|>", "<|im_end|><|im_start|>",
              "<|im_start|><|im_start|", "\u00e9<|im_end|>\u0301", "e<|im_end|>\u0301", "'<|im_end|>s", " <|im_end|>  "]
    texts += PUNCTUATION + [" " + p for p in PUNCTUATION] + [p + "\n" for p in PUNCTUATION] + [p * 3 for p in PUNCTUATION]
    texts += ["...", "?!", "--", " (", ")\n", "!!!\r\n\r\n", " ?\n\n", "a.b,c;d", "\"quoted\"", "(1+2)*3", "#### 72",
              "<<48/2=24>>24", "e.g.", "U.S.A.", "http://example.com/a?b=c&d=e", "foo_bar-baz", "@user #tag"]
    texts += CONTROLS + ["a" + c + "b" for c in CONTROLS] + ["".join(CONTROLS)]
    texts += long_texts()
    atoms = (SPACES + WORDS + PROSE + [" " + w for w in WORDS] + ["'" + c for c in CONTRACTIONS] + ["'" + c.upper() for c in CONTRACTIONS]
             + NUMBERS + NFD_TEXTS + EMOJI + SCRIPTS + ADDED + PARTIAL_ADDED + PUNCTUATION + CONTROLS
             + [str(d) for d in range(10)] + ["\u0301", "\u0323", "\u0308", "\u1161", "\u11a8", "\u200d", "\ufe0f"])
    texts += mixes(atoms, 2500, seed=3)
    texts += mixes(SPACES + ["a", "B", "1", "'s", "'LL", ".", "!", "\u00e9", "e\u0301", "<|im_end|>"], 500, seed=4)

    with open(OUT, "w", encoding="ascii", newline="\n") as f:
        for t in texts:
            f.write(json.dumps(t, ensure_ascii=True) + "\n")
    print(f"{OUT}: {len(texts)} texts, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
