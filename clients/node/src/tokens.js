// The kt1 token format (docs/FORMAT.md), with Node's own crypto only.
//
// A token is `kt1:<version>:<payload>`, the payload unpadded base64url of
// nonce(12) || ciphertext || tag(16) under AES-256-GCM with the AAD
// `kt1:<version>:<context>`. Parsing is as strict as Python's: one spelling per
// token (canonical version, url-safe alphabet only, no padding, spare bits zero),
// because Node's own base64 decoder is lenient.

import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { InvalidToken } from "./errors.js";

export const NONCE_LEN = 12;
export const TAG_LEN = 16;
export const OVERHEAD = NONCE_LEN + TAG_LEN;
export const MAX_VERSION = 2 ** 31 - 1;
const PAYLOAD = /^[A-Za-z0-9_-]*$/;
const VERSION = /^[1-9][0-9]{0,9}$/;
const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const SPARE_BITS = { 2: 0x0f, 3: 0x03 };

/** The `kt1:<version>:` prefix of every token sealed under `version`. */
export function header(version) {
  return `kt1:${version}:`;
}

/** The version a value's header names, or null if it is not a kt1 token (payload unchecked). */
export function versionOf(value) {
  if (typeof value !== "string" || !value.startsWith("kt1:")) return null;
  const second = value.indexOf(":", 4);
  if (second < 0 || second === value.length - 1) return null;
  return parseVersion(value.slice(4, second));
}

function parseVersion(text) {
  if (!VERSION.test(text)) return null;
  const version = Number(text);
  return version <= MAX_VERSION ? version : null;
}

/** Split a token into { version, blob }, strictly; InvalidToken otherwise. */
export function parse(token) {
  if (typeof token !== "string") throw new InvalidToken();
  const first = token.indexOf(":");
  const second = first < 0 ? -1 : token.indexOf(":", first + 1);
  if (second < 0 || token.slice(0, first) !== "kt1") throw new InvalidToken();
  const version = parseVersion(token.slice(first + 1, second));
  if (version === null) throw new InvalidToken();
  return { version, blob: decodePayload(token.slice(second + 1)) };
}

/** Strictly decode a payload: canonical unpadded base64url of at least 28 bytes. */
export function decodePayload(text) {
  const rem = text.length % 4;
  if (!PAYLOAD.test(text) || rem === 1) throw new InvalidToken();
  if (rem && ALPHABET.indexOf(text[text.length - 1]) & SPARE_BITS[rem]) throw new InvalidToken();
  const blob = Buffer.from(text, "base64url");
  if (blob.length < OVERHEAD) throw new InvalidToken();
  return blob;
}

/** Encrypt `plaintext` (string or Buffer) into a token under a 32-byte key. */
export function seal(key, version, context, plaintext, nonce = randomBytes(NONCE_LEN)) {
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  cipher.setAAD(Buffer.from(header(version) + context, "utf8"));
  const data = typeof plaintext === "string" ? Buffer.from(plaintext, "utf8") : plaintext;
  const sealed = Buffer.concat([nonce, cipher.update(data), cipher.final(), cipher.getAuthTag()]);
  return header(version) + sealed.toString("base64url");
}

/** Authenticate and decrypt a parsed token's blob; a Buffer, or InvalidToken. */
export function openBlob(key, version, blob, context) {
  return openWithAad(key, blob, Buffer.from(header(version) + context, "utf8"));
}

/** Authenticate and decrypt nonce || ciphertext || tag with the given AAD. */
export function openWithAad(key, blob, aad) {
  try {
    const decipher = createDecipheriv("aes-256-gcm", key, blob.subarray(0, NONCE_LEN));
    decipher.setAAD(aad);
    decipher.setAuthTag(blob.subarray(blob.length - TAG_LEN));
    return Buffer.concat([decipher.update(blob.subarray(NONCE_LEN, blob.length - TAG_LEN)), decipher.final()]);
  } catch {
    throw new InvalidToken();
  }
}
