# length_reward.py: an example external reward program for grpo.cu: rewards short completions, up to 0.5.
#
# The trainer runs the reward command once per batch with the batch on stdin, one JSON object per line:
#   {"prompt": "...", "completion": "...", "answer": "..."}
# and reads exactly one finite number per input line from stdout, in the same order. Exit 0 on success;
# anything else (a non-zero exit, a missing or extra line, a line that is not a number) stops the run
# with a message naming the command and the line. Print diagnostics to stderr, never to stdout.
#
# Try it by hand:
#   echo '{"prompt": "p", "completion": "<answer>\n7\n</answer>", "answer": "7"}' | python3 dev/examples/length_reward.py
import json
import sys

TARGET_CHARS = 400  # completions up to this many code points get the full bonus


def reward(sample):
    length = len(sample["completion"])  # Python's len: code points, not bytes
    if length <= TARGET_CHARS:
        return 0.5
    return max(0.0, 0.5 * (1.0 - (length - TARGET_CHARS) / TARGET_CHARS))


def main():
    for line in sys.stdin:
        if line.strip():
            print(repr(reward(json.loads(line))))


if __name__ == "__main__":
    main()
