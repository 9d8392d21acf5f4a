# gen_reward_corpus.py: a deterministic corpus of (completion, answer) pairs that drives every branch of the five GSM8K rewards.
# Imported by rewards_oracle.py; run alone it prints the corpus size and a few samples.
#
# What it covers, and why each part is there (the C++ rewards must equal Python's on all of it):
#   - the real format: GSM8K reasoning and answers from data/gsm8k/train.jsonl in the notebook's XML layout,
#     with right and wrong answers, and every trailing variant ("", "\n", "\n\n", " ", "\r\n", text);
#   - every str.isspace() character at the edges of the answer (strip) and between </reasoning> and
#     <answer> (soft_format's \s*), plus look-alikes that are NOT whitespace (U+200B, U+FEFF, U+180E);
#   - digits of other scripts, superscripts, circled, fullwidth and astral digits (isdigit() is True)
#     and fractions, roman numerals, CJK numerals (isnumeric() but not isdigit());
#   - single-line layouts that soft_format accepts (its .*? cannot cross '\n'), '\n' and '\r' inside the
#     reasoning or answer near strict_format's boundary, "\r\n" line ends, a final "\n" before $;
#   - nested, repeated, misspelled and missing tags, tags at the very end, truncations and random edits;
#   - emoji, combining marks, CJK and RTL text, so that lengths in code points differ from bytes.
import json
import os
import random

SEED = 20250607
CORPUS_SIZE = 12000
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GSM8K_TRAIN = os.path.join(REPO_ROOT, "data", "gsm8k", "train.jsonl")

# Every code point for which Python's str.isspace() (and so re's \s) is true: 29 of them.
SPACES = [chr(cp) for cp in range(0x110000) if chr(cp).isspace()]
# Characters that look like whitespace or are invisible but are not str.isspace(): strip keeps them.
NOT_SPACES = ["\u200b", "\ufeff", "\u180e", "\u2060", "\u00ad"]

DIGIT_SCRIPTS = {
    "ascii": "0123456789",
    "arabic_indic": "".join(chr(0x0660 + i) for i in range(10)),
    "extended_arabic_indic": "".join(chr(0x06F0 + i) for i in range(10)),
    "devanagari": "".join(chr(0x0966 + i) for i in range(10)),
    "superscript": "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079",
    "subscript": "".join(chr(0x2080 + i) for i in range(10)),
    "fullwidth": "".join(chr(0xFF10 + i) for i in range(10)),
    "circled": "\u24ea" + "".join(chr(0x2460 + i) for i in range(9)),
    "math_bold": "".join(chr(0x1D7CE + i) for i in range(10)),  # 4-byte UTF-8
    "ethiopic": "".join(chr(0x1369 + i) for i in range(9)),      # isdigit, no zero in the block
}
# isnumeric() but not isdigit(): the int reward must give 0 for these.
NUMERIC_NOT_DIGIT = ["\u00bd", "\u2153", "\u00bc", "\u00be", "\u216b", "\u4e09", "\u2469", "\u5341"]

MULTIBYTE_BITS = ["😀", "🧮", "👨‍👩‍👧", "计算", "café", "e\u0301", "مرحبا", "Ωμέγα", "😀😀", "日本語", "∑", "🇫🇷"]

TAGS = ["<reasoning>", "</reasoning>", "<answer>", "</answer>"]
TAG_LOOKALIKES = ["<Answer>", "<answer >", "</ answer>", "<reasoning >", "</Reasoning>", "<answer/>",
                  "<<answer>>", "<ans>", "</answers>", "answer>", "<answer"]
FORMAT_PIECES = ["<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n", "\n</answer>", "\n</answer>\n",
                 "\n</reasoning>\n<answer>\n"]


def load_gsm8k(limit=3000):
    """(reasoning lines, final answer) pairs from the real data set, in file order."""
    pairs = []
    with open(GSM8K_TRAIN, encoding="utf-8") as f:
        for line in f:
            solution = json.loads(line)["answer"]
            reasoning, answer = solution.split("####")
            lines = [l.strip() for l in reasoning.strip().split("\n") if l.strip()]
            pairs.append((lines, answer.strip()))
            if len(pairs) >= limit:
                break
    return pairs


class Generator:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.gsm8k = load_gsm8k()
        self.items = []

    # ---- small pieces ---------------------------------------------------------------------------
    def whitespace(self, max_len=3, pool=None):
        pool = pool or SPACES
        return "".join(self.rng.choice(pool) for _ in range(self.rng.randint(1, max_len)))

    def gsm8k_pair(self):
        return self.rng.choice(self.gsm8k)

    def reasoning_multiline(self, lines):
        text = "\n".join(lines[: self.rng.randint(1, 3)])
        if self.rng.random() < 0.3:
            text += " " + self.rng.choice(MULTIBYTE_BITS)
        return text

    def reasoning_single_line(self, lines):
        text = " ".join(lines[: self.rng.randint(1, 2)])
        if self.rng.random() < 0.3:
            text = self.rng.choice(MULTIBYTE_BITS) + " " + text
        return text

    def other_script(self, ascii_digits, script):
        table = DIGIT_SCRIPTS[script]
        return "".join(table[int(ch) % len(table)] if ch.isdigit() else ch for ch in ascii_digits)

    def answer_text(self, answer):
        """What the model writes inside <answer>: mostly the answer, sometimes near misses."""
        r = self.rng.random()
        if r < 0.45:
            return answer
        if r < 0.60:
            return self.whitespace() + answer + self.whitespace()
        if r < 0.68:
            return str(self.rng.randint(0, 10000))
        if r < 0.76:
            return self.other_script(answer, self.rng.choice(sorted(DIGIT_SCRIPTS)))
        if r < 0.80:
            return self.rng.choice(NUMERIC_NOT_DIGIT) + self.rng.choice(["", answer])
        if r < 0.84:
            return self.rng.choice(NOT_SPACES) + answer
        if r < 0.88:
            return self.rng.choice(["", " ", "-" + answer, answer + ".0", "$" + answer, answer + ",000",
                                    "The answer is " + answer, "1/2", "3.5", "+" + answer])
        if r < 0.92:
            return answer + "\n" + self.rng.choice(["", "extra", answer])
        if r < 0.96:
            return answer + self.rng.choice(MULTIBYTE_BITS)
        return self.rng.choice(["\r", "\r\r", "\u2028", "\x85"]) + answer

    def trailer(self):
        return self.rng.choice(["", "", "\n", "\n", "\n\n", " ", "\r\n", "\n ", " \n", "x", "\n\n\n",
                                "\nThe end.", "\n" + self.rng.choice(MULTIBYTE_BITS), "<|endoftext|>"])

    def add(self, completion, answer):
        self.items.append({"completion": completion, "answer": answer})

    # ---- families of completions ----------------------------------------------------------------
    def strict_layout(self):
        """The notebook's target format, with the answer region and the trailer varied."""
        lines, answer = self.gsm8k_pair()
        reasoning = self.reasoning_single_line(lines) if self.rng.random() < 0.6 else self.reasoning_multiline(lines)
        body = "<reasoning>\n%s\n</reasoning>\n<answer>\n%s\n</answer>" % (reasoning, self.answer_text(answer))
        self.add(body + self.trailer(), answer)

    def soft_layout(self):
        """Single-line sections, which the soft pattern (no DOTALL) can accept, separated by \\s*."""
        lines, answer = self.gsm8k_pair()
        gap = self.rng.choice(["", "", "\n", " ", self.whitespace(4)])
        reasoning = self.reasoning_single_line(lines) if self.rng.random() < 0.85 else self.reasoning_multiline(lines)
        ans = self.answer_text(answer)
        if self.rng.random() < 0.3:
            ans = self.whitespace(2) + ans
        body = "<reasoning>%s</reasoning>%s<answer>%s</answer>" % (reasoning, gap, ans)
        self.add(body + self.trailer(), answer)

    def line_ending_variant(self):
        """The strict layout with \\r\\n or \\r line ends, or a '\\n' moved into the reasoning."""
        lines, answer = self.gsm8k_pair()
        text = "<reasoning>\n%s\n</reasoning>\n<answer>\n%s\n</answer>\n" % (self.reasoning_single_line(lines), answer)
        r = self.rng.random()
        if r < 0.4:
            text = text.replace("\n", "\r\n")
        elif r < 0.6:
            text = text.replace("\n", "\r\n", self.rng.randint(1, 5))
        elif r < 0.8:
            text = text.replace("\n</reasoning>", "\r\n</reasoning>")
        else:
            text = text.replace("<reasoning>\n", "<reasoning>\n\n")
        self.add(text, answer)

    def tag_soup(self):
        """Random sequences of tags, look-alikes, format pieces, whitespace and text."""
        lines, answer = self.gsm8k_pair()
        pieces = []
        for _ in range(self.rng.randint(1, 9)):
            r = self.rng.random()
            if r < 0.35:
                pieces.append(self.rng.choice(TAGS))
            elif r < 0.5:
                pieces.append(self.rng.choice(FORMAT_PIECES))
            elif r < 0.58:
                pieces.append(self.rng.choice(TAG_LOOKALIKES))
            elif r < 0.7:
                pieces.append(self.whitespace(3, SPACES + ["\n", "\n"]))
            elif r < 0.85:
                pieces.append(self.answer_text(answer))
            else:
                pieces.append(self.rng.choice(lines + MULTIBYTE_BITS))
        self.add("".join(pieces), answer)

    def nested_and_repeated(self):
        lines, answer = self.gsm8k_pair()
        wrong = str(self.rng.randint(0, 999))
        a, b = self.rng.sample([answer, wrong, self.whitespace() + answer], 2)
        reasoning = self.reasoning_single_line(lines)
        forms = [
            "<reasoning>\n%s\n</reasoning>\n<answer>\n%s\n</answer>\n<answer>\n%s\n</answer>\n" % (reasoning, a, b),
            "<reasoning>\n%s\n</reasoning>\n<answer>\n<answer>\n%s\n</answer>\n</answer>\n" % (reasoning, a),
            "<answer>%s<answer>%s</answer>%s</answer>" % (a, b, a),
            "<reasoning>\n<reasoning>\n%s\n</reasoning>\n</reasoning>\n<answer>\n%s\n</answer>\n" % (reasoning, a),
            "<reasoning>%s</reasoning><answer>%s</answer><reasoning>%s</reasoning><answer>%s</answer>" % (reasoning, a, reasoning, b),
            "<reasoning>\n%s\n</reasoning>\n<answer>\n%s\n</answer>" % (reasoning, a) * 2,
            "<answer>\n%s\n</answer>\n<reasoning>\n%s\n</reasoning>\n" % (a, reasoning),
            "<answer>%s</answer></answer>%s" % (a, b),
            "%s</answer>%s" % (a, b),
            "<reasoning>%s</reasoning>\n<answer>%s" % (reasoning, a),
            "<reasoning>\n%s\n</reasoning>\n<answer>\n%s\n</answer>\n</answer>\n" % (reasoning, a),
        ]
        self.add(self.rng.choice(forms), answer)

    def mutated(self):
        """A well-formed completion after a few random edits: boundaries of every pattern element."""
        lines, answer = self.gsm8k_pair()
        text = "<reasoning>\n%s\n</reasoning>\n<answer>\n%s\n</answer>\n" % (self.reasoning_single_line(lines), answer)
        if self.rng.random() < 0.3:
            text = "<reasoning>%s</reasoning>\n<answer>%s</answer>" % (self.reasoning_single_line(lines), answer)
        for _ in range(self.rng.randint(1, 3)):
            at = self.rng.randint(0, len(text))
            r = self.rng.random()
            if r < 0.3:
                text = text[:at] + text[at + 1:]
            elif r < 0.6:
                text = text[:at] + self.rng.choice(["\n", "\r", " ", "<", ">", "/", "\t"] + SPACES + TAGS) + text[at:]
            elif r < 0.75:
                text = text[:at]  # truncated, often right after or inside a tag
            elif r < 0.85:
                text = self.rng.choice(["", " ", "\n", "Sure! ", self.whitespace()]) + text
            else:
                text = text + self.rng.choice(TAGS + FORMAT_PIECES + MULTIBYTE_BITS)
        self.add(text, answer)

    def digits_systematic(self):
        """Every digit script alone, mixed, and next to non-digits, inside the strict layout."""
        for script, table in sorted(DIGIT_SCRIPTS.items()):
            for k in range(6):
                number = "".join(self.rng.choice(table) for _ in range(self.rng.randint(1, 4)))
                if k == 5:
                    number += self.rng.choice(NUMERIC_NOT_DIGIT)
                answer = number if k % 2 == 0 else self.other_script(str(self.rng.randint(0, 999)), "ascii")
                self.add("<reasoning>\nDigits in %s.\n</reasoning>\n<answer>\n%s\n</answer>\n" % (script, number), answer)
        for ch in NUMERIC_NOT_DIGIT:
            for answer in [ch, "1"]:
                self.add("<reasoning>\nA fraction.\n</reasoning>\n<answer>\n%s\n</answer>\n" % ch, answer)

    def spaces_systematic(self):
        """Each whitespace character at each edge of the answer and as the gap between the tags."""
        for i, ch in enumerate(SPACES):
            answer = str(10 + i)
            for padded in [ch + answer, answer + ch, ch + answer + ch, ch * 3 + answer]:
                self.add("<reasoning>\nPad %d.\n</reasoning>\n<answer>\n%s\n</answer>\n" % (i, padded), answer)
                self.add("<reasoning>Pad %d.</reasoning>\n<answer>%s</answer>" % (i, padded), answer)
            for gap in [ch, ch + ch, "\n" + ch, ch + "\n"]:
                self.add("<reasoning>Gap %d.</reasoning>%s<answer>%s</answer>\n" % (i, gap, answer), answer)
            # at the very start and end of a completion with no tags at all (extract takes all of it)
            self.add(ch + answer + ch, answer)
        for ch in NOT_SPACES:
            self.add("<reasoning>No.</reasoning>%s<answer>%s7</answer>" % (ch, ch), "7")
            self.add("<reasoning>\nNo.\n</reasoning>\n<answer>\n7%s\n</answer>\n" % ch, "7")

    def edge_cases(self):
        fixed = [
            "", "\n", " ", "<answer>", "</answer>", "<answer></answer>", "<answer>7</answer>", "7",
            "<reasoning></reasoning><answer></answer>", "<reasoning>\n\n</reasoning>\n<answer>\n\n</answer>\n",
            "<reasoning>\n\n</reasoning>\n<answer>\n7\n</answer>\n", "<reasoning>\nx\n</reasoning>\n<answer>\n7\n</answer>",
            "<reasoning>\nx\n</reasoning>\n<answer>\n7\n</answer>\n", "<reasoning>\nx\n</reasoning>\n<answer>\n7\n</answer>\n\n",
            "<reasoning>\nx\n</reasoning>\n<answer>\n7\n</answer>\n\n\n", "<reasoning>\nx\n</reasoning>\n<answer>\n7\n</answer>\r\n",
            "<reasoning>\nx\n</reasoning>\n<answer>\n7\n</answer>x", "\n</answer>", "\n</answer>\n", "\n<answer>\n",
            "<reasoning>\n", "\n</reasoning>\n", "<reasoning>\nx\n</reasoning>\n<answer>\n7\n</answer>\n\u2028",
            "<reasoning>\nx\u2028y\n</reasoning>\n<answer>\n7\n</answer>\n", "<reasoning>\nx\ry\n</reasoning>\n<answer>\n7\n</answer>\n",
            "<reasoning>\nx\x85y\n</reasoning>\n<answer>\n7\n</answer>\n", "<reasoning>x\ny</reasoning><answer>7</answer>",
            "<reasoning>x</reasoning><answer>7\n</answer>", "<reasoning>x</reasoning>\x1c\x1d\x1e\x1f<answer>7</answer>",
            "\x00<answer>7</answer>", "<answer>7</answer>\x00", "😀" * 50 + "\n</answer>\n" + "😀" * 7,
            "\n</answer>" + "計" * 13, "<reasoning>\n</reasoning>\n<answer>\n</answer>\n",
        ]
        for text in fixed:
            for answer in ["7", "", "x"]:
                self.add(text, answer)

    def build(self, size):
        self.edge_cases()
        self.spaces_systematic()
        self.digits_systematic()
        families = [(self.strict_layout, 30), (self.soft_layout, 20), (self.line_ending_variant, 6),
                    (self.tag_soup, 18), (self.nested_and_repeated, 8), (self.mutated, 18)]
        makers = [maker for maker, weight in families for _ in range(weight)]
        while len(self.items) < size:
            self.rng.choice(makers)()
        return self.items


def build_corpus(size=CORPUS_SIZE, seed=SEED):
    """The corpus: a list of {"completion": str, "answer": str}, the same list on every run."""
    return Generator(seed).build(size)


if __name__ == "__main__":
    corpus = build_corpus()
    size = sum(len(json.dumps(item, ensure_ascii=False).encode("utf-8")) + 1 for item in corpus)
    print("%d items, %.2f MB as JSONL" % (len(corpus), size / 1e6))
    for item in random.Random(1).sample(corpus, 5):
        print(json.dumps(item, ensure_ascii=False))
