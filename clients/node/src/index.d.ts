// Types of the keyturn Node.js client (see README.md).

/** The driver seen through one method: rows as objects. */
export interface DatabaseAdapter {
  query(sql: string, params: unknown[]): Promise<Record<string, unknown>[]>;
}

/** A key-encryption key that unwraps data keys (local: env:/file:). */
export interface KEK {
  readonly kekId: string;
  readonly source: string;
  unwrap(wrapped: string, aad: Buffer): Promise<Buffer>;
}

export interface OpenKeyringOptions {
  /** "env:NAME", "file:PATH" (mode 0600), "transit://HOST:PORT/KEY", or a KEK object. */
  kek: string | KEK;
  /** fromBetterSqlite3(db), fromPg(pool) or fromMysql2(pool). */
  db: DatabaseAdapter;
  /** keyturn.toml's [apps] refresh_seconds (default 30). */
  refreshSeconds?: number;
  /** Per "table.column", its AES-GCM [[legacy]] entry (keyturn.toml's option names). */
  legacy?: Record<string, LegacyEntry>;
  /** Called for each value read in a legacy layout (to be re-saved through encrypt). */
  onRewrapNeeded?: (column: string, kind: string) => void;
}

export interface LegacyEntry {
  format: "aes-gcm";
  key_env?: string | string[];
  key_file?: string | string[];
  prefix?: string;
  encoding?: "base64" | "base64url" | "hex";
  order?: "iv,tag,ct" | "iv,ct,tag";
  separator?: string;
  iv_len?: number;
  kdf?: "raw" | "sha256" | "pbkdf2" | "scrypt";
  suffix?: string;
  salt?: string;
  iterations?: number;
  hash?: "sha256" | "sha512" | "sha1";
  n?: number;
  r?: number;
  p?: number;
}

export interface LegacyReader {
  readonly name: string;
  recognises(value: unknown): boolean;
  decrypt(value: string): Buffer;
}

export declare function legacyReader(
  entry: LegacyEntry & { name?: string },
  env?: Record<string, string | undefined>,
): LegacyReader;

export interface ContextOption {
  /** "table.column", rowContext(...) for a row-bound column, fieldContext(...) for a JSON field. */
  context: string;
}

export declare class Keyring {
  readonly activeVersion: number;
  readonly keyringId: string;
  reload(): Promise<void>;
  encrypt(plaintext: string | Buffer, options: ContextOption): Promise<string>;
  encrypt(plaintext: null | undefined, options: ContextOption): Promise<null>;
  /** `token` as read: a string, or a BLOB/bytea column's Buffer. */
  decrypt(token: string | Uint8Array, options: ContextOption): Promise<string>;
  decrypt(token: null | undefined, options: ContextOption): Promise<null>;
  decryptBytes(token: string | Uint8Array, options: ContextOption): Promise<Buffer | "">;
  needsRewrap(value: string | null | undefined): boolean;
  /** Per column, how many values were read in a legacy layout. */
  readonly rewrapNeeded: Record<string, number>;
}

export declare function openKeyring(options: OpenKeyringOptions): Promise<Keyring>;

export declare function fromBetterSqlite3(database: unknown): DatabaseAdapter;
export declare function fromPg(pool: unknown): DatabaseAdapter;
export declare function fromMysql2(pool: unknown): DatabaseAdapter;

export declare function columnContext(table: string, column: string): string;
export declare function rowContext(table: string, column: string, pk: unknown[] | unknown): string;
export declare function fieldContext(context: string, path: string): string;

export declare function header(version: number): string;
export declare function versionOf(value: unknown): number | null;
export declare function parse(token: string): { version: number; blob: Buffer };
export declare function parseKek(text: string, source: string): Buffer;
export declare function localKek(spec: string, env?: Record<string, string | undefined>): KEK;
export declare function transitKek(spec: string, env?: Record<string, string | undefined>): KEK;
export declare function isTransit(spec: string): boolean;
export declare function isProduction(env?: Record<string, string | undefined>): boolean;

export declare class KeyturnError extends Error {}
export declare class InvalidToken extends KeyturnError {}
export declare class KeyManagementError extends KeyturnError {}
export declare class UnknownKeyVersion extends KeyManagementError {
  readonly version: number;
}
export declare class WrongKEK extends KeyManagementError {}
export declare class InvalidKEK extends KeyManagementError {}
export declare class KMSError extends KeyManagementError {}
export declare class LegacyKeyError extends KeyManagementError {}
export declare class CorruptKeyring extends KeyManagementError {}
export declare class ConfigError extends KeyturnError {}
export declare class NotInitialized extends ConfigError {}
