// Sealing and opening one value per call through the keyring, against bare
// AES-256-GCM with Node's crypto and base64url (the strongest baseline: the same
// primitive and encoding, no parsing checks, no key lookup). Goal: at most 1.5x.
// Usage: node bench/tokens.mjs [calls] [rounds]

import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import Database from "better-sqlite3";
import { fromBetterSqlite3, openKeyring } from "../src/index.js";

const calls = Number(process.argv[2] ?? 100000);
const rounds = Number(process.argv[3] ?? 7);
const context = "integrations.api_key";
const secret = "sk_live_0123456789abcdefghij";

// A keyring in memory, as `keyturn init` would write it: one DEK wrapped by a local KEK.
const kek = randomBytes(32);
const dek = randomBytes(32);
const db = new Database(":memory:");
db.exec("CREATE TABLE keyturn_meta (name TEXT PRIMARY KEY, value TEXT)");
db.exec("CREATE TABLE keyturn_keys (version INTEGER PRIMARY KEY, wrapped_dek TEXT, state TEXT)");
db.prepare("INSERT INTO keyturn_meta VALUES ('keyring_id', 'bench')").run();
const nonce = randomBytes(12);
const wrap = createCipheriv("aes-256-gcm", kek, nonce);
wrap.setAAD(Buffer.from("keyturn-dek:v1:bench:1"));
const wrapped = Buffer.concat([nonce, wrap.update(dek), wrap.final(), wrap.getAuthTag()]);
db.prepare("INSERT INTO keyturn_keys VALUES (1, ?, 'active')").run(wrapped.toString("base64url"));
process.env.KEYTURN_BENCH_KEK = kek.toString("hex");
const keyring = await openKeyring({ kek: "env:KEYTURN_BENCH_KEK", db: fromBetterSqlite3(db), refreshSeconds: 3600 });

function bareSeal(plaintext) {
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", dek, iv);
  cipher.setAAD(Buffer.from("kt1:1:" + context));
  const out = Buffer.concat([iv, cipher.update(plaintext, "utf8"), cipher.final(), cipher.getAuthTag()]);
  return "kt1:1:" + out.toString("base64url");
}

function bareOpen(token) {
  const blob = Buffer.from(token.slice(6), "base64url");
  const decipher = createDecipheriv("aes-256-gcm", dek, blob.subarray(0, 12));
  decipher.setAAD(Buffer.from("kt1:1:" + context));
  decipher.setAuthTag(blob.subarray(blob.length - 16));
  return Buffer.concat([decipher.update(blob.subarray(12, blob.length - 16)), decipher.final()]).toString("utf8");
}

const token = bareSeal(secret);
const cases = {
  "encrypt, bare crypto": async () => { for (let i = 0; i < calls; i++) bareSeal(secret); },
  "encrypt, keyturn": async () => { for (let i = 0; i < calls; i++) await keyring.encrypt(secret, { context }); },
  "decrypt, bare crypto": async () => { for (let i = 0; i < calls; i++) bareOpen(token); },
  "decrypt, keyturn": async () => { for (let i = 0; i < calls; i++) await keyring.decrypt(token, { context }); },
};
const best = {};
for (let round = 0; round < rounds; round++) {
  for (const [name, run] of Object.entries(cases)) {
    const started = process.hrtime.bigint();
    await run();
    const ns = Number(process.hrtime.bigint() - started) / calls;
    best[name] = Math.min(best[name] ?? Infinity, ns);
  }
}
console.log(`${calls.toLocaleString()} calls, best of ${rounds}, Node ${process.version}`);
for (const op of ["encrypt", "decrypt"]) {
  const bare = best[`${op}, bare crypto`];
  const ours = best[`${op}, keyturn`];
  console.log(`  ${op}: bare ${(bare / 1000).toFixed(2)} µs, keyturn ${(ours / 1000).toFixed(2)} µs a call: ${(ours / bare).toFixed(2)}x (goal 1.5x)`);
}
