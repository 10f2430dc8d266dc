// Reading values in an app's own AES-GCM layout (a keyturn.toml `[[legacy]]`
// entry with format = "aes-gcm"), so a Node app can switch to keyturn before
// `keyturn import-legacy` has converted its column: the same options, the same
// strict decoding and the same key derivations as keyturn.legacy.aesgcm.

import { createDecipheriv, createHash, pbkdf2Sync, scryptSync } from "node:crypto";
import { ConfigError, InvalidToken, LegacyKeyError } from "./errors.js";
import { readPrivateFile } from "./kek.js";

const PATTERNS = {
  base64: /^[A-Za-z0-9+/]*={0,2}$/,
  base64url: /^[A-Za-z0-9_-]*={0,2}$/,
  hex: /^(?:[0-9a-fA-F]{2})*$/,
};
const ORDERS = ["iv,tag,ct", "iv,ct,tag"];
const KDFS = ["raw", "sha256", "pbkdf2", "scrypt"];
const HASHES = ["sha256", "sha512", "sha1"];
const OPTIONS = new Set([
  "name", "format", "key_env", "key_file", "prefix", "encoding", "order", "separator",
  "iv_len", "kdf", "suffix", "salt", "iterations", "hash", "n", "r", "p", "key_encoding",
  "key_bytes",
]);
const TAG_LEN = 16;
const AES_KEY_LENGTHS = [16, 24, 32];

/** Strict decoding (padding optional for base64); null if `text` is not of `encoding`. */
export function decode(text, encoding) {
  if (!PATTERNS[encoding].test(text)) return null;
  if (encoding === "hex") return Buffer.from(text, "hex");
  const body = text.replace(/=+$/, "");
  if (body.length % 4 === 1) return null;
  const standard = encoding === "base64url" ? body.replace(/-/g, "+").replace(/_/g, "/") : body;
  return Buffer.from(standard, "base64");
}

/**
 * A reader for one `[[legacy]]` entry, given with keyturn.toml's option names:
 * { name, format: "aes-gcm", key_env | key_file, prefix, encoding, order,
 *   separator, iv_len, kdf, suffix, salt, iterations, hash, n, r, p }.
 */
export function legacyReader(entry, env = process.env) {
  const spec = {
    prefix: "", encoding: "base64", order: "iv,tag,ct", separator: "", iv_len: 12,
    kdf: "raw", suffix: "", salt: "", iterations: 0, hash: "sha256", n: 2 ** 14, r: 8, p: 1,
    key_encoding: "auto", key_bytes: 0,
    ...entry,
  };
  const where = `[[legacy]] ${spec.name ?? "(no name)"}`;
  for (const key of Object.keys(entry)) {
    if (!OPTIONS.has(key)) throw new ConfigError(`${where}: unknown option ${key}`);
  }
  if (spec.format !== "aes-gcm") throw new ConfigError(`${where}: only format = "aes-gcm" is read from Node`);
  if (!PATTERNS[spec.encoding]) throw new ConfigError(`${where}: encoding must be base64, base64url or hex`);
  if (!ORDERS.includes(spec.order)) throw new ConfigError(`${where}: order must be "iv,tag,ct" or "iv,ct,tag"`);
  if (!KDFS.includes(spec.kdf)) throw new ConfigError(`${where}: kdf must be one of ${KDFS.join(", ")}`);
  if (!(spec.iv_len >= 8 && spec.iv_len <= 64)) throw new ConfigError(`${where}: iv_len must be between 8 and 64`);
  if (["pbkdf2", "scrypt"].includes(spec.kdf) && !spec.salt) throw new ConfigError(`${where}: kdf ${spec.kdf} needs salt`);
  if (spec.kdf === "pbkdf2" && (!(spec.iterations > 0) || !HASHES.includes(spec.hash))) {
    throw new ConfigError(`${where}: kdf pbkdf2 needs iterations and a hash of ${HASHES.join(", ")}`);
  }
  const envs = [spec.key_env ?? []].flat();
  const files = [spec.key_file ?? []].flat();
  if (envs.length + files.length === 0 || (envs.length && files.length)) {
    throw new ConfigError(`${where}: give key_env or key_file (one of the two)`);
  }
  const sources = [...envs.map((n) => `env:${n}`), ...files.map((f) => `file:${f}`)];
  let keys = null;

  function loadKeys() {
    if (keys) return keys;
    const secrets = [];
    for (const name of envs) {
      const text = env[name];
      if (text) secrets.push([`env:${name}`, text]);
    }
    for (const file of files) {
      try {
        secrets.push([`file:${file}`, readPrivateFile(file, "legacy key file")]);
      } catch (err) {
        if (!/does not exist/.test(err.message)) throw new LegacyKeyError(err.message);
      }
    }
    if (!secrets.length) {
      throw new LegacyKeyError(`legacy reader ${spec.name}: no key at ${sources.join(", ")}`);
    }
    keys = secrets.map(([source, text]) => derive(spec, source, text));
    return keys;
  }

  function parts(value) {
    let body;
    if (spec.prefix) body = value.startsWith(spec.prefix) ? value.slice(spec.prefix.length) : null;
    else body = value.startsWith("kt1:") ? null : value;
    if (body === null) return null;
    let iv;
    let tag;
    let ct;
    const names = spec.order.split(",");
    if (spec.separator) {
      const pieces = body.split(spec.separator);
      if (pieces.length !== 3) return null;
      const decoded = Object.fromEntries(names.map((n, i) => [n, decode(pieces[i], spec.encoding)]));
      ({ iv, tag, ct } = decoded);
    } else {
      const raw = decode(body, spec.encoding);
      if (raw === null) return null;
      iv = raw.subarray(0, spec.iv_len);
      const rest = raw.subarray(spec.iv_len);
      if (spec.order === "iv,tag,ct") [tag, ct] = [rest.subarray(0, TAG_LEN), rest.subarray(TAG_LEN)];
      else [ct, tag] = [rest.subarray(0, rest.length - TAG_LEN), rest.subarray(rest.length - TAG_LEN)];
    }
    if (!iv || !tag || !ct || iv.length !== spec.iv_len || tag.length !== TAG_LEN) return null;
    return { iv, tag, ct };
  }

  return {
    name: spec.name,
    /** Whether `value` has this layout's shape (no key needed). */
    recognises(value) {
      return typeof value === "string" && value !== "" && parts(value) !== null;
    },
    /** The plaintext, trying each key in order; InvalidToken if none opens it. */
    decrypt(value) {
      const found = typeof value === "string" ? parts(value) : null;
      if (!found) throw new InvalidToken();
      for (const key of loadKeys()) {
        try {
          const decipher = createDecipheriv(`aes-${key.length * 8}-gcm`, key, found.iv);
          decipher.setAuthTag(found.tag);
          return Buffer.concat([decipher.update(found.ct), decipher.final()]);
        } catch {
          // the next key (a previous one), else InvalidToken below
        }
      }
      throw new InvalidToken();
    },
  };
}

function derive(spec, source, text) {
  const material = Buffer.from(text + spec.suffix, "utf8");
  if (spec.kdf === "sha256") return createHash("sha256").update(material).digest();
  if (spec.kdf === "pbkdf2") return pbkdf2Sync(material, Buffer.from(spec.salt), spec.iterations, 32, spec.hash);
  if (spec.kdf === "scrypt") {
    return scryptSync(material, Buffer.from(spec.salt), 32, { N: spec.n, r: spec.r, p: spec.p, maxmem: 256 * spec.n * spec.r + 1024 * 1024 });
  }
  const raw = text.trim();
  const bytes = Buffer.from(raw, "utf8");
  const tried = [];
  if (spec.key_encoding === "utf8") {
    const key = spec.key_bytes ? (bytes.length >= spec.key_bytes ? bytes.subarray(0, spec.key_bytes) : Buffer.alloc(0)) : bytes;
    if (AES_KEY_LENGTHS.includes(key.length)) return key;
    tried.push(`its characters (${bytes.length} UTF-8 bytes)`);
  } else {
    const auto = spec.key_encoding === "auto";
    for (const encoding of auto ? ["hex", "base64", "base64url"] : [spec.key_encoding]) {
      const key = decode(raw, encoding);
      if (key !== null && AES_KEY_LENGTHS.includes(key.length)) return key;
      tried.push(`${encoding} (${key === null ? `not ${encoding}` : `${key.length} bytes`})`);
    }
    if (auto) {
      if (AES_KEY_LENGTHS.includes(bytes.length)) return bytes;
      tried.push(`its characters (${bytes.length} UTF-8 bytes)`);
    }
  }
  throw new LegacyKeyError(
    `legacy reader ${spec.name}: the key from ${source} is not a 16-, 24- or 32-byte AES key read as ${tried.join(", ")}; ` +
      "set key_encoding (hex, base64, utf8) to say how the app reads it, key_bytes = 32 if it cuts a longer text, or `kdf` for a passphrase",
  );
}
