// The kt1 format against the shared vectors (tests/vectors/kt1.json), every
// tamper and truncation of a token, and strict parsing against a reference.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { InvalidToken, columnContext, parse, rowContext, versionOf } from "../src/index.js";
import { openBlob, seal } from "../src/tokens.js";

const vectors = JSON.parse(
  readFileSync(new URL("../../../tests/vectors/kt1.json", import.meta.url), "utf8"),
);

function open(token, key, context) {
  const { version, blob } = parse(token);
  return openBlob(key, version, blob, context).toString("utf8");
}

test("every valid vector opens, and seals back to the same token with its nonce", () => {
  for (const v of vectors.valid) {
    const key = Buffer.from(v.key, "hex");
    assert.equal(open(v.token, key, v.context), v.plaintext);
    assert.equal(seal(key, v.version, v.context, v.plaintext, Buffer.from(v.nonce, "hex")), v.token);
  }
});

test("every invalid vector is refused with InvalidToken or an unknown version", () => {
  for (const v of vectors.invalid) {
    const key = Buffer.from(v.key, "hex");
    assert.throws(
      () => {
        const { version, blob } = parse(v.token);
        if (version !== v.version) throw new InvalidToken(); // the keyring holds only v.version
        openBlob(key, version, blob, v.context);
      },
      InvalidToken,
      v.description,
    );
  }
});

test("contexts are byte-identical to Python's", () => {
  for (const c of vectors.contexts) {
    assert.equal(rowContext(c.table, c.column, c.pk), c.context, c.description);
  }
  assert.equal(columnContext("users", "secret"), "users.secret");
});

test("every edited character and every truncation of a token is refused", () => {
  const key = randomBytes(32);
  const token = seal(key, 7, "t.c", "sk_live_secret");
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_:=+/ ";
  for (let i = 0; i < token.length; i++) {
    for (const c of alphabet) {
      if (c === token[i]) continue;
      const edited = token.slice(0, i) + c + token.slice(i + 1);
      assert.throws(() => open(edited, key, "t.c"), InvalidToken, edited);
    }
  }
  for (let n = 0; n < token.length; n++) {
    assert.throws(() => open(token.slice(0, n), key, "t.c"), InvalidToken);
  }
  assert.throws(() => open(token, key, "t.other"), InvalidToken);
  assert.throws(() => open(token + "A", key, "t.c"), InvalidToken);
});

// The reference: a token is canonical iff re-encoding what it decodes to gives it back.
function canonical(text) {
  const m = /^kt1:([1-9][0-9]{0,9}):([A-Za-z0-9_-]*)$/.exec(text);
  if (!m || Number(m[1]) > 2 ** 31 - 1) return false;
  const blob = Buffer.from(m[2], "base64url");
  return blob.length >= 28 && blob.toString("base64url") === m[2];
}

test("strict parsing agrees with the canonical-encoding reference on random inputs", () => {
  const pieces = ["kt1", ":", "0", "1", "9", "2147483648", "A", "Q", "g", "w", "-", "_", "=", "+", "/", "é", " "];
  for (let round = 0; round < 20000; round++) {
    let text;
    if (round % 2) {
      const token = seal(randomBytes(32), 1 + (round % 50), "c", randomBytes(round % 40));
      const i = round % token.length;
      text = token.slice(0, i) + pieces[round % pieces.length] + token.slice(i + (round % 3));
    } else {
      text = Array.from({ length: 1 + (round % 12) }, (_, k) => pieces[(round * 7 + k * 13) % pieces.length]).join("");
    }
    let parsed = true;
    try {
      parse(text);
    } catch (err) {
      assert.ok(err instanceof InvalidToken);
      parsed = false;
    }
    assert.equal(parsed, canonical(text), JSON.stringify(text));
  }
});

test("versionOf reads only the header", () => {
  assert.equal(versionOf("kt1:12:xyz"), 12);
  for (const value of ["kt1:012:x", "kt1:1:", "kt1:x:y", "sk_live", "kt1:2147483648:x", null]) {
    assert.equal(versionOf(value), null, String(value));
  }
});

test("every export has a declaration in index.d.ts", async () => {
  const declared = readFileSync(new URL("../src/index.d.ts", import.meta.url), "utf8");
  const exported = Object.keys(await import("../src/index.js"));
  const missing = exported.filter((name) => !new RegExp(`(function|class) ${name}\\b`).test(declared));
  assert.deepEqual(missing, []);
});
