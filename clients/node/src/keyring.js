// The keyring an app process reads and writes with: the data keys of
// `keyturn_keys`, unwrapped by the KEK, following rotations under the
// app-process contract (docs/ROTATION.md): the active version is re-read at
// least every `refreshSeconds`, and a token under a version newer than all this
// process holds makes it look that version up (and reload if it exists).

import {
  ConfigError,
  CorruptKeyring,
  InvalidToken,
  NotInitialized,
  UnknownKeyVersion,
} from "./errors.js";
import { localKek } from "./kek.js";
import { legacyReader } from "./legacy.js";
import { isTransit, transitKek } from "./transit.js";
import { header, openBlob, parse, seal } from "./tokens.js";

/** Tokens are ASCII: a binary column's bytes that are not UTF-8 hold none. */
const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true });

// Look-ups of a version newer than all held are spaced by this (waiting, never
// refusing): forged headers cost at most 20 cheap queries a second, and a
// genuine new version is always found (as Python's Store does).
const PROBE_MS = 50;

/** The AAD binding a wrapped DEK to its keyring and version. */
function wrapAad(keyringId, version) {
  return Buffer.from(`keyturn-dek:v1:${keyringId}:${version}`, "utf8");
}

/**
 * Load and unwrap a database's keyring.
 * @param {object} options
 * @param {string|object} options.kek "env:NAME", "file:PATH", or a KEK object ({ unwrap })
 * @param {object} options.db an adapter: fromBetterSqlite3(db), fromPg(pool), fromMysql2(pool)
 * @param {number} [options.refreshSeconds=30] the [apps] refresh_seconds of keyturn.toml
 * @param {object} [options.legacy] per column ("table.column"), its [[legacy]] entry
 *   (format "aes-gcm", keyturn.toml's option names): values in that layout are read
 *   too, and counted in `rewrapNeeded`, until `keyturn import-legacy` converts them
 * @param {function} [options.onRewrapNeeded] called (column, kind) for each such read
 */
export async function openKeyring({
  kek,
  db,
  refreshSeconds = 30,
  legacy = {},
  onRewrapNeeded = () => {},
  now = Date.now,
} = {}) {
  if (!db || typeof db.query !== "function") {
    throw new ConfigError("openKeyring needs db: an adapter such as fromBetterSqlite3(database)");
  }
  if (!(refreshSeconds > 0 && refreshSeconds <= 86400)) {
    throw new ConfigError("refreshSeconds must be a number of seconds, 0 < s <= 86400");
  }
  if (typeof kek !== "string" && typeof kek?.unwrap !== "function") {
    throw new ConfigError('openKeyring needs kek: "env:NAME", "file:PATH" or a KEK object');
  }
  const readers = new Map(
    Object.entries(legacy).map(([column, entry]) => [column, legacyReader({ name: column, ...entry })]),
  );
  const keyring = new Keyring(kek, db, refreshSeconds * 1000, now, readers, onRewrapNeeded);
  await keyring.reload();
  return keyring;
}

export class Keyring {
  #kekSource;
  #kek;
  #db;
  #refreshMs;
  #now;
  #keys = new Map(); // version -> 32-byte key
  #destroyed = new Set();
  #active = 0;
  #keyringId = "";
  #nextRefresh = 0;
  #nextProbe = 0;
  #readers;
  #onRewrap;
  /** Per column, how many values were read in a legacy layout (to be re-saved). */
  rewrapNeeded = {};
  #probe = Promise.resolve();
  #refreshing = null;

  constructor(kek, db, refreshMs, now, readers = new Map(), onRewrap = () => {}) {
    this.#readers = readers;
    this.#onRewrap = onRewrap;
    this.#kekSource = kek;
    this.#db = db;
    this.#refreshMs = refreshMs;
    this.#now = now;
  }

  /** The version new tokens are sealed under. */
  get activeVersion() {
    return this.#active;
  }

  get keyringId() {
    return this.#keyringId;
  }

  /**
   * Read the KEK again (an env var or key file given by name) and unwrap every
   * version with it: after `keyturn rotate-kek`, with the new KEK in place, the
   * app picks it up here. WrongKEK if it does not open them all.
   */
  async reload() {
    const source = this.#kekSource;
    if (typeof source !== "string") this.#kek = source;
    else this.#kek = isTransit(source) ? transitKek(source) : localKek(source);
    await this.#load(false);
  }

  /** Re-read the versions; unwrap only those not held yet (a rotation's new key).
   * Concurrent callers share one refresh. */
  #refresh() {
    this.#refreshing ??= this.#load(true).finally(() => {
      this.#refreshing = null;
    });
    return this.#refreshing;
  }

  async #load(reuse) {
    let meta;
    let rows;
    try {
      meta = await this.#db.query("SELECT value FROM keyturn_meta WHERE name = 'keyring_id'", []);
      rows = await this.#db.query(
        "SELECT version, wrapped_dek, state FROM keyturn_keys ORDER BY version",
        [],
      );
    } catch (err) {
      if (/no such table|does not exist|doesn't exist/i.test(String(err?.message))) {
        throw new NotInitialized("this database has no keyturn keyring yet; run `keyturn init`");
      }
      throw err;
    }
    if (!meta.length || !rows.length) {
      throw new NotInitialized("this database has no keyturn keyring yet; run `keyturn init`");
    }
    const keyringId = String(meta[0].value);
    const active = rows.filter((r) => r.state === "active").map((r) => Number(r.version));
    if (active.length !== 1) {
      throw new CorruptKeyring(`keyturn_keys has ${active.length} active versions; exactly one is required`);
    }
    const keys = new Map();
    const destroyed = new Set();
    for (const row of rows) {
      const version = Number(row.version);
      if (row.state === "destroyed" || row.wrapped_dek == null) {
        destroyed.add(version);
        continue;
      }
      const held = reuse && keyringId === this.#keyringId ? this.#keys.get(version) : undefined;
      keys.set(version, held ?? (await this.#kek.unwrap(String(row.wrapped_dek), wrapAad(keyringId, version))));
    }
    this.#keyringId = keyringId;
    this.#keys = keys;
    this.#destroyed = destroyed;
    this.#active = active[0];
    this.#nextRefresh = this.#now() + this.#refreshMs;
  }

  /** Seal `plaintext` (string or Buffer) for `context`; null stays null, "" stays "". */
  async encrypt(plaintext, { context } = {}) {
    checkContext(context);
    if (plaintext === null || plaintext === undefined) return null;
    if (plaintext === "") return "";
    if (typeof plaintext !== "string" && !Buffer.isBuffer(plaintext)) {
      throw new TypeError(`encrypt takes a string or a Buffer, not ${typeof plaintext}`);
    }
    if (this.#now() >= this.#nextRefresh) await this.#refresh();
    return seal(this.#keys.get(this.#active), this.#active, context, plaintext);
  }

  /** Open a token sealed for `context` as a UTF-8 string; null stays null, "" stays "". */
  async decrypt(token, { context } = {}) {
    const opened = await this.decryptBytes(token, { context });
    return opened === null || opened === "" ? opened : opened.toString("utf8");
  }

  /** Open a token as a Buffer (a BLOB or bytea column's Buffer is read as its text).
   * InvalidToken for anything that does not open, with no detail. */
  async decryptBytes(token, { context } = {}) {
    checkContext(context);
    if (token === null || token === undefined) return null;
    if (token instanceof Uint8Array) {
      try {
        token = STRICT_UTF8.decode(token);
      } catch {
        throw new InvalidToken(); // bytes that are not text are no token
      }
    }
    if (token === "") return "";
    let parsed;
    try {
      parsed = parse(token);
    } catch (err) {
      return this.#legacy(err, token, context);
    }
    const { version, blob } = parsed;
    let key = this.#keys.get(version);
    if (key === undefined && (await this.#reloadFor(version))) key = this.#keys.get(version);
    if (key === undefined) {
      throw new UnknownKeyVersion(version, this.#destroyed.has(version) ? "destroyed" : "");
    }
    try {
      return openBlob(key, version, blob, context);
    } catch (err) {
      return this.#legacy(err, token, context);
    }
  }

  /** A value the keyring does not open, read by its column's legacy reader if it has one. */
  #legacy(err, value, context) {
    const column = context.split("#")[0].split("$")[0];
    const reader = this.#readers.get(column);
    if (!(err instanceof InvalidToken) || !reader || !reader.recognises(value)) throw err;
    const plaintext = reader.decrypt(value);
    this.rewrapNeeded[column] = (this.rewrapNeeded[column] ?? 0) + 1;
    this.#onRewrap(column, "aes-gcm");
    return plaintext;
  }

  /** Reload if `version` exists now: only a version newer than all held can have appeared. */
  async #reloadFor(version) {
    const known = [...this.#keys.keys(), ...this.#destroyed];
    if (version <= Math.max(...known)) return false;
    const probe = this.#probe.then(async () => {
      if (this.#keys.has(version)) return;
      const wait = this.#nextProbe - this.#now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      this.#nextProbe = this.#now() + PROBE_MS;
      const [row] = await this.#db.query("SELECT max(version) AS newest FROM keyturn_keys", []);
      if (row && version <= Number(row.newest)) await this.#refresh();
    });
    this.#probe = probe.catch(() => {});
    await probe;
    return this.#keys.has(version);
  }

  /** Whether a stored value should be re-saved through encrypt (not on the active version). */
  needsRewrap(value) {
    return Boolean(value) && !String(value).startsWith(header(this.#active));
  }

  toJSON() {
    return { keyringId: this.#keyringId, activeVersion: this.#active, kek: this.#kek.kekId };
  }

  [Symbol.for("nodejs.util.inspect.custom")]() {
    return `Keyring(${this.#keyringId}, active v${this.#active}, ${this.#keys.size} key(s))`;
  }
}

function checkContext(context) {
  if (typeof context !== "string" || !context) {
    throw new ConfigError('a context is required: { context: "table.column" } (see rowContext)');
  }
}


