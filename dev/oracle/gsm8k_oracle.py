# gsm8k_oracle.py: Python's own json and str.split/strip on GSM8K, written out for the C++ loader's tests to match.
import json
import os
import sys

SPLITS = {"train": "data/gsm8k/train.jsonl", "test": "data/gsm8k/test.jsonl"}


def reference_cases():
    """Tricky answers for answer.split("####")[1].strip(): every code point Python's str.isspace() accepts,
    look-alikes it does not, and "####" repeated. The set comes from Python itself, not from a list in C++."""
    whitespace = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    not_whitespace = ["\u200b", "\ufeff", "\u180e", "\u00ad", "\u2060", "\u0000", "\u00b7"]
    answers = []
    for ws in whitespace + not_whitespace:
        answers.append("work\n#### " + ws + ws + "42" + ws)
        answers.append("####" + ws + "4" + ws + "2" + ws + "\n")
    answers += [
        "a #### 1 #### 2", "#####5", "########", "#### ", "x ####", "####",
        "Natalia sold 48/2 = <<48/2=24>>24 clips.\n####   -3,000.50  \n\n",
        "#### 72\u20ac", "\u2003#### \U0001f600 \u3000", "#### #### 7", "## ## 7 ####\t8\t",
    ]
    return [{"answer": a, "reference": a.split("####")[1].strip()} for a in answers]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python3 dev/oracle/gsm8k_oracle.py OUT_DIR")
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for split, path in SPLITS.items():
        records = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                # the C++ reader skips lines of JSON whitespace only; so must the oracle, or the counts differ
                if not line.strip(" \t\r\n"):
                    continue
                record = json.loads(line)
                records.append({
                    "line": line_no,
                    "question": record["question"],
                    "reference": record["answer"].split("####")[1].strip(),
                })
        # raw UTF-8 (ensure_ascii=False) while the dataset uses \uXXXX escapes, so the test's comparison
        # does not run both sides through the same escape decoder
        with open(os.path.join(out_dir, "gsm8k_%s.jsonl" % split), "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        counts[split] = len(records)
    with open(os.path.join(out_dir, "gsm8k_reference_cases.jsonl"), "w", encoding="utf-8") as f:
        for case in reference_cases():
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    with open(os.path.join(out_dir, "gsm8k_counts.json"), "w") as f:
        json.dump(counts, f)
    print("gsm8k oracle: %d train, %d test records" % (counts["train"], counts["test"]))


if __name__ == "__main__":
    main()
