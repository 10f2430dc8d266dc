// keyturn for Node.js apps: read and write kt1 secrets under the keyring the
// keyturn CLI manages, in the app's own database, following its rotations.

export { fromBetterSqlite3, fromMysql2, fromPg } from "./adapters.js";
export { columnContext, fieldContext, rowContext } from "./context.js";
export {
  ConfigError,
  CorruptKeyring,
  InvalidKEK,
  InvalidToken,
  KeyManagementError,
  KeyturnError,
  KMSError,
  LegacyKeyError,
  NotInitialized,
  UnknownKeyVersion,
  WrongKEK,
} from "./errors.js";
export { isProduction, localKek, parseKek } from "./kek.js";
export { Keyring, openKeyring } from "./keyring.js";
export { legacyReader } from "./legacy.js";
export { isTransit, transitKek } from "./transit.js";
export { header, parse, versionOf } from "./tokens.js";
