// Local key-encryption keys (env:NAME, file:PATH), parsed and checked as the
// Python library does (keyturn._core.kek, keyturn.keyfiles): 32 bytes as 64 hex
// characters or base64; a key file readable by group or others is refused; a
// trivially weak key is refused in production. The key never leaves this module's
// closures, and no message shows it.

import { createHmac } from "node:crypto";
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { InvalidKEK, InvalidToken, WrongKEK } from "./errors.js";
import { openWithAad } from "./tokens.js";

const KEK_BYTES = 32;
const GUIDANCE =
  "expected 32 bytes written as 64 hex characters or base64; generate one with `keyturn gen-kek`";

/** Whether KEYTURN_ENV says production: fail closed on every key question. */
export function isProduction(env = process.env) {
  return ["production", "prod"].includes((env.KEYTURN_ENV ?? "").trim().toLowerCase());
}

/** Decode a KEK given as 64 hex characters or base64 (either alphabet). */
export function parseKek(text, source) {
  const value = text.trim();
  if (value.length === 2 * KEK_BYTES && /^[0-9a-fA-F]+$/.test(value)) {
    return Buffer.from(value, "hex");
  }
  const standard = value.replace(/-/g, "+").replace(/_/g, "/");
  const padded = standard + "=".repeat((4 - (standard.length % 4)) % 4);
  if (/^[A-Za-z0-9+/]*={0,2}$/.test(padded) && padded.length % 4 === 0) {
    const raw = Buffer.from(padded, "base64");
    if (raw.length === KEK_BYTES) return raw;
  }
  throw new InvalidKEK(`KEK from ${source} is malformed: ${GUIDANCE}`);
}

/** Why a key is trivially weak (all zeros, a short pattern, a sequence), or null. */
export function weakness(key) {
  if (key.every((b) => b === 0)) return "it is all zeros";
  for (const period of [1, 2, 4, 8, 16]) {
    const head = key.subarray(0, period);
    let repeated = true;
    for (let i = period; i < key.length && repeated; i += period) {
      repeated = key.subarray(i, i + period).equals(head);
    }
    if (repeated) return "it is a short repeated pattern";
  }
  const steps = new Set();
  for (let i = 0; i + 1 < key.length; i++) steps.add((key[i + 1] - key[i] + 256) % 256);
  if (steps.size === 1) return "it is a counting sequence";
  if (new Set(key).size < 12) return "it uses too few distinct byte values to be random";
  return null;
}

/** A small key file's text, refused if it is not a regular file or group or others can read it. */
export function readPrivateFile(path, what) {
  let fd;
  try {
    fd = openSync(path, "r");
  } catch (err) {
    if (err.code === "ENOENT") throw new InvalidKEK(`the ${what} ${path} does not exist`);
    throw new InvalidKEK(`cannot read the ${what} ${path}: ${err.code}`);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new InvalidKEK(`the ${what} ${path} is not a regular file (a directory?)`);
    if (stat.mode & 0o077) {
      const mode = (stat.mode & 0o7777).toString(8).padStart(4, "0");
      throw new InvalidKEK(
        `the ${what} ${path} is accessible to group or others (mode ${mode}); run \`chmod 600 ${path}\``,
      );
    }
    const buffer = Buffer.alloc(4096);
    const n = readSync(fd, buffer, 0, buffer.length, 0);
    return buffer.subarray(0, n).toString("utf8").trim();
  } finally {
    closeSync(fd);
  }
}

/**
 * A local KEK from `env:NAME` or `file:PATH`: { kekId, source, unwrap(wrapped, aad) }.
 * A weak key is refused in production, as the Python side does.
 */
export function localKek(spec, env = process.env) {
  let text;
  if (spec.startsWith("env:")) {
    const name = spec.slice(4);
    text = env[name];
    if (!text) throw new InvalidKEK(`the KEK env var ${name} is not set`);
  } else if (spec.startsWith("file:")) {
    text = readPrivateFile(spec.slice(5), "KEK file");
  } else {
    throw new InvalidKEK(
      `kek ${JSON.stringify(spec.split(":")[0])}: expected "env:NAME", "file:PATH" or "transit://…"`,
    );
  }
  const key = parseKek(text, spec);
  const reason = weakness(key);
  if (reason && isProduction(env)) {
    throw new InvalidKEK(`the KEK from ${spec} is refused in production: ${reason}`);
  }
  const kekId = "local:" + createHmac("sha256", key).update("keyturn kek-id v1").digest("hex").slice(0, 16);
  return {
    kekId,
    source: spec,
    /** A wrapped DEK (base64url of nonce || ciphertext || tag) opened, or WrongKEK. */
    async unwrap(wrapped, aad) {
      try {
        return openWithAad(key, Buffer.from(wrapped, "base64url"), aad);
      } catch (err) {
        if (err instanceof InvalidToken) {
          throw new WrongKEK(`the KEK from ${spec} does not open this keyring`);
        }
        throw err;
      }
    },
    toJSON() {
      return { kekId, source: spec };
    },
  };
}
