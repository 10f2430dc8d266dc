// keyturn's errors, mirroring the Python library's (keyturn.errors). No message
// ever carries a key, a token's payload or a plaintext.

export class KeyturnError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** A token is malformed, tampered with, or sealed for another context. No detail, on purpose. */
export class InvalidToken extends KeyturnError {
  constructor() {
    super("invalid token");
  }
}

/** Base of key problems an operator can act on. */
export class KeyManagementError extends KeyturnError {}

/** A token names a key version the keyring does not hold (or has destroyed). */
export class UnknownKeyVersion extends KeyManagementError {
  constructor(version, detail = "") {
    super(
      `token names key version ${version}, which this keyring does not have` +
        (detail ? ` (${detail})` : ""),
    );
    this.version = version;
  }
}

/** The KEK does not unwrap the keyring's data keys. */
export class WrongKEK extends KeyManagementError {}

/** A KEK is malformed, weak, missing, or stored unsafely. */
export class InvalidKEK extends KeyManagementError {}

/** The KMS holding the KEK is unreachable, sealed, or refuses the request (fail closed). */
export class KMSError extends KeyManagementError {}

/** The configuration is missing, malformed or inconsistent. */
export class ConfigError extends KeyturnError {}

/** The database has no keyturn keyring yet (run `keyturn init`). */
export class NotInitialized extends ConfigError {}

/** The keyring's rows are inconsistent (edited by hand): restore them from a backup. */
export class CorruptKeyring extends KeyManagementError {}

/** A legacy reader's key is missing, malformed, or does not open its values. */
export class LegacyKeyError extends KeyManagementError {}
