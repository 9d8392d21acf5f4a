# plot_log.py: draws the reward, KL and completion-length curves of a train_grpo log.jsonl as one SVG file (python3 stdlib only).
#
# Usage: python3 dev/plot_log.py out/log.jsonl [out/curves.svg]
# Each panel shows one metric against the step, with its own vertical scale, min and max written at the axis.
# A resumed run appends to the same log, so steps may repeat after a crash; the last record of a step wins.
import json
import sys
from xml.sax.saxutils import escape

PANELS = [("reward", "reward (mean total)"), ("kl", "KL to the reference"),
          ("completions/mean_length", "completion length (tokens)")]
WIDTH, PANEL_HEIGHT, MARGIN = 720, 180, 48


def read_log(path):
    by_step = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{number}: not a JSON line ({e}); is this a train_grpo log.jsonl?")
            if "step" not in record:
                sys.exit(f"{path}:{number}: no \"step\" field; is this a train_grpo log.jsonl?")
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def panel(records, key, title, top):
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    parts = [f'<text x="{MARGIN}" y="{top + 14}" font-size="13" font-family="sans-serif">{escape(title)}</text>',
             f'<rect x="{MARGIN}" y="{top + 20}" width="{WIDTH - 2 * MARGIN}" height="{PANEL_HEIGHT - 40}" '
             f'fill="none" stroke="#999"/>']
    if not points:
        parts.append(f'<text x="{MARGIN + 8}" y="{top + 60}" font-size="12" fill="#666">no "{escape(key)}" in the log'
                     f'{" (beta = 0 logs no KL)" if key == "kl" else ""}</text>')
        return parts
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    inner_w, inner_h = WIDTH - 2 * MARGIN, PANEL_HEIGHT - 40

    def to_svg(x, y):
        return (MARGIN + (x - x0) / (x1 - x0) * inner_w, top + 20 + inner_h - (y - y0) / (y1 - y0) * inner_h)

    coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in (to_svg(x, y) for x, y in points))
    parts.append(f'<polyline class="curve" data-key="{escape(key)}" points="{coords}" fill="none" '
                 f'stroke="#1f77b4" stroke-width="1.5"/>')
    parts.append(f'<text x="{MARGIN - 4}" y="{top + 26}" font-size="10" text-anchor="end">{y1:.4g}</text>')
    parts.append(f'<text x="{MARGIN - 4}" y="{top + 20 + inner_h}" font-size="10" text-anchor="end">{y0:.4g}</text>')
    parts.append(f'<text x="{WIDTH - MARGIN}" y="{top + PANEL_HEIGHT - 6}" font-size="10" text-anchor="end">'
                 f'step {x1}</text>')
    return parts


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python3 dev/plot_log.py LOG.jsonl [OUT.svg]")
    log_path = sys.argv[1]
    out_path = sys.argv[2] if len(sys.argv) == 3 else log_path.rsplit(".", 1)[0] + ".svg"
    records = read_log(log_path)
    height = PANEL_HEIGHT * len(PANELS) + 10
    body = []
    for i, (key, title) in enumerate(PANELS):
        body += panel(records, key, title, i * PANEL_HEIGHT + 5)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}">\n<rect width="100%" height="100%" fill="white"/>\n' +
           "\n".join(body) + "\n</svg>\n")
    with open(out_path, "w") as f:
        f.write(svg)
    print(f"wrote {out_path} ({len(records)} steps)")


if __name__ == "__main__":
    main()
