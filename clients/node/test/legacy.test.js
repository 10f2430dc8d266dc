// Reading an app's own AES-GCM layouts from Node, against values written by the
// test suite's independent encoders (tests/legacy_encoders.py, built from the
// primitives, not from keyturn), with the layouts' own [[legacy]] entries.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import Database from "better-sqlite3";
import { InvalidToken, LegacyKeyError, fromBetterSqlite3, legacyReader, openKeyring } from "../src/index.js";
import { PYTHON } from "./helpers.js";

const TESTS = new URL("../../../tests", import.meta.url).pathname;

/** Per AES-GCM layout: its [[legacy]] body, a key, and values the encoder wrote. */
function samples() {
  const code = `
import json
from legacy_encoders import LAYOUTS
out = {}
for name, (body, encode, make_key) in LAYOUTS.items():
    if 'aes-gcm' not in body:
        continue
    key = make_key()
    plain = ["sk_live_" + name + "_Päss", "x", ""]
    out[name] = {"body": body, "key": key, "values": [[p, encode(key, p.encode())] for p in plain]}
print(json.dumps(out))
`;
  return JSON.parse(execFileSync(PYTHON, ["-c", code], { cwd: TESTS, encoding: "utf8" }));
}

/** The few TOML lines a [[legacy]] body has: key = "text" or key = number. */
function entry(body) {
  return Object.fromEntries(
    body.trim().split("\n").map((line) => {
      const [, key, value] = /^(\w+) = (.*)$/.exec(line);
      return [key, value.startsWith('"') ? JSON.parse(value) : Number(value)];
    }),
  );
}

test("every AES-GCM layout the encoders write is read, and nothing else", () => {
  for (const [name, layout] of Object.entries(samples())) {
    const reader = legacyReader({ name, ...entry(layout.body), key_env: "KT_LEGACY" }, { KT_LEGACY: layout.key });
    for (const [plain, value] of layout.values) {
      assert.ok(reader.recognises(value), `${name}: ${value}`);
      assert.equal(reader.decrypt(value).toString("utf8"), plain, name);
    }
    const [, first] = layout.values[0];
    assert.equal(reader.recognises("kt1:1:" + "A".repeat(40)), false);
    const other = legacyReader({ name, ...entry(layout.body), key_env: "KT_LEGACY" }, { KT_LEGACY: samples()[name].key });
    assert.throws(() => other.decrypt(first), InvalidToken, `${name}: another key`);
    const missing = legacyReader({ name, ...entry(layout.body), key_env: "KT_NONE" }, {});
    assert.throws(() => missing.decrypt(first), LegacyKeyError);
  }
});

test("the keyring reads a column's legacy values and counts them for rewrap", async () => {
  const { trek } = samples();
  const dir = mkdtempSync(join(tmpdir(), "keyturn-legacy-"));
  writeFileSync(join(dir, "keyturn.toml"), 'database = "sqlite:///app.db"\n');
  new Database(join(dir, "app.db")).close();
  const env = { ...process.env, KEYTURN_KEK: randomBytes(32).toString("hex") };
  execFileSync(PYTHON, ["-m", "keyturn", "init"], { cwd: dir, env });
  process.env.KEYTURN_KEK = env.KEYTURN_KEK;
  process.env.TREK_KEY = trek.key;
  try {
    const seen = [];
    const keyring = await openKeyring({
      kek: "env:KEYTURN_KEK",
      db: fromBetterSqlite3(new Database(join(dir, "app.db"))),
      legacy: { "users.api_key": { ...entry(trek.body), key_env: "TREK_KEY" } },
      onRewrapNeeded: (column, kind) => seen.push([column, kind]),
    });
    const [[plain, value]] = trek.values;
    assert.equal(await keyring.decrypt(value, { context: "users.api_key" }), plain);
    assert.equal(await keyring.decrypt(value, { context: "users.api_key#7" }), plain); // row-bound too
    assert.deepEqual(keyring.rewrapNeeded, { "users.api_key": 2 });
    assert.deepEqual(seen[0], ["users.api_key", "aes-gcm"]);
    assert.equal(keyring.needsRewrap(value), true);
    await assert.rejects(keyring.decrypt(value, { context: "other.column" }), InvalidToken);
    await assert.rejects(keyring.decrypt("sk_plaintext", { context: "users.api_key" }), InvalidToken);
  } finally {
    delete process.env.KEYTURN_KEK;
    delete process.env.TREK_KEY;
  }
});
