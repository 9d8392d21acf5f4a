// gen_tokenizer_tables.js: writes tokenizer/unicode_tables.{h,cpp}, the Unicode data that the tokenizer's NFC and pre-tokenizer regex need.
//
// Usage (from the repository root):  node dev/unicode/gen_tokenizer_tables.js
//
// Every table is read out of the running node itself, because node is the oracle: its RegExp defines
// \p{L}, \p{N} and \s, and its String.prototype.normalize defines NFC. Run it with the node that runs
// dev/oracle/tokenizer_oracle.js (the header records process.versions.unicode; 17.0 when written).
// Node exposes no canonical combining class numbers, so the generator recovers the canonical ordering
// by asking normalize('NFD') to sort pairs of marks, and labels each ordering class with its ccc
// number from python3's unicodedata (only the order matters to NFC; the numbers are for readers).
// Before writing anything it re-implements the C++ NFC in JS on the new tables and checks it against
// String.normalize on every code point and on 300,000 random mark sequences; it exits 1 on any mismatch.
"use strict";
const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");

const MAX_CP = 0x10ffff;
const HANGUL_FIRST = 0xac00, HANGUL_LAST = 0xd7a3;
const isSurrogate = (cp) => cp >= 0xd800 && cp <= 0xdfff;
const str = (...cps) => String.fromCodePoint(...cps);
const cpsOf = (s) => Array.from(s, (c) => c.codePointAt(0));
const hex = (cp) => "0x" + cp.toString(16).toUpperCase().padStart(4, "0");

function fail(msg) {
  console.error("gen_tokenizer_tables: " + msg);
  process.exit(1);
}

// Inclusive [first, last] ranges of the code points where pred holds. Lone surrogates never match a
// /u regex and never occur in valid UTF-8 input, so they are left out.
function rangesOf(pred) {
  const ranges = [];
  for (let cp = 0; cp <= MAX_CP; cp++) {
    if (isSurrogate(cp) || !pred(cp)) continue;
    const last = ranges[ranges.length - 1];
    if (last && last[1] === cp - 1) last[1] = cp;
    else ranges.push([cp, cp]);
  }
  return ranges;
}

// ---- the pre-tokenizer's character classes, exactly as node's RegExp defines them ----------------
const letter = /^\p{L}$/u, number = /^\p{N}$/u, space = /^\s$/u;
const letterRanges = rangesOf((cp) => letter.test(str(cp)));
const numberRanges = rangesOf((cp) => number.test(str(cp)));
const spaceRanges = rangesOf((cp) => space.test(str(cp)));

// ---- canonical decompositions (full, already recursive), Hangul left to the algorithm ------------
const decompositions = new Map();  // cp -> [cps]
for (let cp = 0; cp <= MAX_CP; cp++) {
  if (isSurrogate(cp) || (cp >= HANGUL_FIRST && cp <= HANGUL_LAST)) continue;
  const d = str(cp).normalize("NFD");
  if (d !== str(cp)) decompositions.set(cp, cpsOf(d));
}

// ---- canonical ordering classes of the characters that survive NFD -------------------------------
// A mark of class 230 (U+0301) and one of class 1 (U+0334) expose every non-zero class: NFD swaps
// x after U+0334 when ccc(x) > 1, and before U+0301 when 0 < ccc(x) < 230.
const nfd = (s) => s.normalize("NFD");
const nonStarters = [];
for (let cp = 0; cp <= MAX_CP; cp++) {
  if (isSurrogate(cp) || decompositions.has(cp) || (cp >= HANGUL_FIRST && cp <= HANGUL_LAST)) continue;
  const x = str(cp);
  if (nfd(x + "\u0334") === "\u0334" + x || nfd("\u0301" + x) === x + "\u0301") nonStarters.push(cp);
}
// compareClass(a, b) < 0 when ccc(a) < ccc(b): NFD puts the lower class first.
function compareClass(a, b) {
  if (nfd(str(a, b)) === str(b, a)) return 1;
  if (nfd(str(b, a)) === str(a, b)) return -1;
  return 0;
}
nonStarters.sort((a, b) => compareClass(a, b) || a - b);
const orderClasses = [];  // arrays of code points of equal class, lowest class first
for (const cp of nonStarters) {
  const cls = orderClasses[orderClasses.length - 1];
  if (cls && compareClass(cls[0], cp) === 0) cls.push(cp);
  else orderClasses.push([cp]);
}
// Sorting with a comparator assumes a total order; confirm it really is one between neighbours.
for (let i = 1; i < orderClasses.length; i++) {
  if (compareClass(orderClasses[i - 1][0], orderClasses[i][0]) !== -1) fail("ordering classes are not totally ordered near " + hex(orderClasses[i][0]));
}
const pythonCcc = JSON.parse(execFileSync("python3", ["-c",
  "import json,unicodedata,sys\n" +
  "print(json.dumps({'version': unicodedata.unidata_version, 'ccc': {cp: unicodedata.combining(chr(cp)) for cp in map(int, sys.argv[1:])}}))",
  ...nonStarters.map(String)], { maxBuffer: 1 << 26 }).toString());
const combiningClass = new Map();  // cp -> ccc, non-zero only
let previousCcc = 0;
for (const cls of orderClasses) {
  const known = new Set(cls.map((cp) => pythonCcc.ccc[cp]).filter((c) => c > 0));
  if (known.size !== 1) fail(`ordering class of ${hex(cls[0])} has ccc numbers {${[...known]}} in python's Unicode ${pythonCcc.version}; expected exactly one. Label it by hand from UnicodeData.txt.`);
  const ccc = [...known][0];
  if (ccc <= previousCcc) fail(`ccc ${ccc} of ${hex(cls[0])} is out of order`);
  previousCcc = ccc;
  for (const cp of cls) combiningClass.set(cp, ccc);
}
const cccRanges = [];  // [first, last, ccc]
for (const cp of [...combiningClass.keys()].sort((a, b) => a - b)) {
  const last = cccRanges[cccRanges.length - 1];
  if (last && last[1] === cp - 1 && last[2] === combiningClass.get(cp)) last[1] = cp;
  else cccRanges.push([cp, cp, combiningClass.get(cp)]);
}

// ---- primary composites: (first, second) -> composite ---------------------------------------------
// A composite that NFC keeps (not excluded, not a singleton) composes from the NFC of all but its
// last decomposed code point, plus that last code point.
const compositions = [];
for (const [cp, d] of decompositions) {
  if (str(cp).normalize("NFC") !== str(cp) || d.length < 2) continue;
  const first = cpsOf(str(...d.slice(0, -1)).normalize("NFC"));
  if (first.length !== 1) fail(`composite ${hex(cp)} does not compose from one code point plus its last mark`);
  compositions.push([first[0], d[d.length - 1], cp]);
}
compositions.sort((a, b) => a[0] - b[0] || a[1] - b[1]);

// ---- a JS copy of tokenizer/unicode.cpp's NFC on these tables, checked against node --------------
const compositionMap = new Map(compositions.map(([a, b, c]) => [a * 0x200000 + b, c]));
const SBase = 0xac00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11a7, LCount = 19, VCount = 21, TCount = 28;
const NCount = VCount * TCount, SCount = LCount * NCount;
const cccOf = (cp) => combiningClass.get(cp) || 0;
function composePair(a, b) {
  if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount) return SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
  if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount === 0 && b > TBase && b < TBase + TCount) return a + (b - TBase);
  return compositionMap.get(a * 0x200000 + b);
}
function referenceNfc(cps) {
  const d = [];
  for (const cp of cps) {
    if (cp >= SBase && cp < SBase + SCount) {
      const s = cp - SBase;
      d.push(LBase + Math.floor(s / NCount), VBase + Math.floor((s % NCount) / TCount));
      if (s % TCount) d.push(TBase + (s % TCount));
    } else d.push(...(decompositions.get(cp) || [cp]));
  }
  for (let i = 1; i < d.length; i++) {  // canonical ordering: stable insertion sort of each mark run
    for (let j = i; j > 0 && cccOf(d[j]) !== 0 && cccOf(d[j - 1]) > cccOf(d[j]); j--) [d[j - 1], d[j]] = [d[j], d[j - 1]];
  }
  const out = [];
  let starter = -1, lastCcc = 0;
  for (const cp of d) {
    const ccc = cccOf(cp);
    if (starter >= 0 && (lastCcc === 0 ? out.length - 1 === starter : lastCcc < ccc)) {
      const c = composePair(out[starter], cp);
      if (c !== undefined) { out[starter] = c; continue; }
    }
    if (ccc === 0) starter = out.length;
    lastCcc = ccc;
    out.push(cp);
  }
  return out;
}
function checkNfc(s) {
  const want = s.normalize("NFC"), got = str(...referenceNfc(cpsOf(s)));
  if (got !== want) fail(`NFC mismatch on [${cpsOf(s).map(hex)}]: tables give [${cpsOf(got).map(hex)}], node gives [${cpsOf(want).map(hex)}]`);
}
for (let cp = 0; cp <= MAX_CP; cp++) {
  if (isSurrogate(cp)) continue;
  checkNfc(str(cp));
  if (decompositions.has(cp)) checkNfc(str(cp).normalize("NFD"));
}
// Random sequences over everything that takes part in normalisation, starters included.
const pool = [...new Set([...decompositions.keys(), ...[...decompositions.values()].flat(), ...nonStarters,
  0x1100, 0x1161, 0x11a8, 0xac00, 0xac01, 0x61, 0x20])];
let seed = 12345;
const random = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296);
for (let n = 0; n < 300000; n++) {
  const len = 2 + Math.floor(random() * 6);
  const seq = [];
  for (let i = 0; i < len; i++) seq.push(pool[Math.floor(random() * pool.length)]);
  checkNfc(str(...seq));
}

// ---- write the files -----------------------------------------------------------------------------
const root = path.join(__dirname, "../..");
const version = process.versions.unicode;
const banner = `GENERATED by dev/unicode/gen_tokenizer_tables.js from node ${process.version} (Unicode ${version}); do not edit.\n` +
  `// Regenerate from the repository root with: node dev/unicode/gen_tokenizer_tables.js`;

function rows(items, perLine, format) {
  const lines = [];
  for (let i = 0; i < items.length; i += perLine) lines.push("    " + items.slice(i, i + perLine).map(format).join(" "));
  return lines.join("\n");
}
const rangeTable = (name, ranges, what) =>
  `// ${what}: ${ranges.length} ranges.\n` +
  `const UnicodeRange ${name}[] = {\n${rows(ranges, 4, ([a, b]) => `{${hex(a)}, ${hex(b)}},`)}\n};\n` +
  `const size_t ${name}Count = sizeof(${name}) / sizeof(${name}[0]);\n`;

const decompositionEntries = [...decompositions.entries()].sort((a, b) => a[0] - b[0]);
const decompositionPool = [];
const decompositionRows = decompositionEntries.map(([cp, d]) => {
  const row = [cp, decompositionPool.length, d.length];
  decompositionPool.push(...d);
  return row;
});
if (decompositionPool.length > 0xffff) fail("decomposition pool outgrew uint16_t offsets");

const header = `// unicode_tables.h: ${banner}
// The Unicode data behind the tokenizer's NFC and pre-tokenizer regex, as node ${process.version} defines it; lookups live in tokenizer/unicode.cpp.
#pragma once
#include <cstddef>
#include <cstdint>

// The Unicode version of the node that generated the tables (process.versions.unicode).
extern const char kUnicodeTablesVersion[];

struct UnicodeRange { uint32_t first, last; };  // inclusive, sorted, disjoint
struct CombiningClassRange { uint32_t first, last; uint8_t combining_class; };
// The full canonical decomposition of codepoint is kDecompositionCodepoints[start .. start+length).
struct CanonicalDecomposition { uint32_t codepoint; uint16_t start; uint16_t length; };
struct CompositionPair { uint32_t first, second, composite; };  // sorted by (first, second)

extern const UnicodeRange kLetterRanges[];      // /\\p{L}/u
extern const size_t kLetterRangesCount;
extern const UnicodeRange kNumberRanges[];      // /\\p{N}/u
extern const size_t kNumberRangesCount;
extern const UnicodeRange kWhitespaceRanges[];  // /\\s/u: JS's WhiteSpace + LineTerminator, which has U+FEFF and not U+0085
extern const size_t kWhitespaceRangesCount;
// Non-zero canonical combining classes of the code points that NFD leaves alone.
extern const CombiningClassRange kCombiningClassRanges[];
extern const size_t kCombiningClassRangesCount;
// Every code point whose NFD differs from itself, except the Hangul syllables (decomposed by formula).
extern const CanonicalDecomposition kCanonicalDecompositions[];
extern const size_t kCanonicalDecompositionsCount;
extern const uint32_t kDecompositionCodepoints[];
// Pairs that NFC composes (composition exclusions and singletons already left out; Hangul by formula).
extern const CompositionPair kCompositionPairs[];
extern const size_t kCompositionPairsCount;
`;

const source = `// unicode_tables.cpp: ${banner}
#include "tokenizer/unicode_tables.h"

const char kUnicodeTablesVersion[] = "${version}";

${rangeTable("kLetterRanges", letterRanges, "\\p{L}")}
${rangeTable("kNumberRanges", numberRanges, "\\p{N}")}
${rangeTable("kWhitespaceRanges", spaceRanges, "\\s")}
// ${cccRanges.length} ranges.
const CombiningClassRange kCombiningClassRanges[] = {
${rows(cccRanges, 4, ([a, b, c]) => `{${hex(a)}, ${hex(b)}, ${c}},`)}
};
const size_t kCombiningClassRangesCount = sizeof(kCombiningClassRanges) / sizeof(kCombiningClassRanges[0]);

// ${decompositionRows.length} decompositions into ${decompositionPool.length} code points.
const CanonicalDecomposition kCanonicalDecompositions[] = {
${rows(decompositionRows, 4, ([cp, start, len]) => `{${hex(cp)}, ${start}, ${len}},`)}
};
const size_t kCanonicalDecompositionsCount = sizeof(kCanonicalDecompositions) / sizeof(kCanonicalDecompositions[0]);
const uint32_t kDecompositionCodepoints[] = {
${rows(decompositionPool, 8, (cp) => `${hex(cp)},`)}
};

// ${compositions.length} pairs.
const CompositionPair kCompositionPairs[] = {
${rows(compositions, 3, ([a, b, c]) => `{${hex(a)}, ${hex(b)}, ${hex(c)}},`)}
};
const size_t kCompositionPairsCount = sizeof(kCompositionPairs) / sizeof(kCompositionPairs[0]);
`;

fs.writeFileSync(path.join(root, "tokenizer/unicode_tables.h"), header);
fs.writeFileSync(path.join(root, "tokenizer/unicode_tables.cpp"), source);
console.log(`unicode ${version}: ${letterRanges.length} letter, ${numberRanges.length} number, ${spaceRanges.length} space ranges; ` +
  `${cccRanges.length} ccc ranges (${orderClasses.length} classes); ${decompositionRows.length} decompositions; ${compositions.length} compositions; NFC checked`);
