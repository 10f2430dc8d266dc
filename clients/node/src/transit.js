// The KEK in OpenBao or Vault Transit: `transit://HOST:PORT/KEY?mount=transit`
// (plain HTTP, loopback only) or `transit+https://HOST:PORT/KEY?mount=transit`,
// the same URLs as keyturn.toml's `kek`. Data keys are unwrapped by the KMS; a
// KMS that cannot be reached or refuses fails closed (KMSError), with no local
// fallback. The token comes from BAO_TOKEN or VAULT_TOKEN, or token_file=PATH
// (mode 0600), never from the URL.

import { createHash, timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import { ConfigError, InvalidKEK, KMSError, WrongKEK } from "./errors.js";
import { readPrivateFile } from "./kek.js";

const TOKEN_ENVS = ["BAO_TOKEN", "VAULT_TOKEN"];
const QUERY_KEYS = new Set(["mount", "token_file", "timeout"]);
const DIGEST = 32;

function loopback(host) {
  if (host === "localhost") return true;
  const bare = host.replace(/^\[|\]$/g, "");
  if (isIP(bare) === 4) return bare.startsWith("127.");
  return bare === "::1";
}

/** Whether a kek spec names Transit. */
export function isTransit(spec) {
  return /^transit(\+https)?:\/\//.test(spec);
}

/** A Transit KEK: { kekId, source, unwrap(wrapped, aad) }, every failure a keyturn error. */
export function transitKek(spec, env = process.env) {
  const where = `kek ${JSON.stringify(spec.split("?")[0])}`;
  let url;
  try {
    url = new URL(spec.replace(/^transit(\+https)?:/, "http:"));
  } catch {
    throw new ConfigError(`${where}: expected transit://HOST:PORT/KEYNAME?mount=transit`);
  }
  const https = spec.startsWith("transit+https:");
  const keyName = url.pathname.replace(/^\//, "");
  if (!url.hostname || !url.port || !keyName || keyName.includes("/")) {
    throw new ConfigError(`${where}: expected transit://HOST:PORT/KEYNAME?mount=transit`);
  }
  for (const key of url.searchParams.keys()) {
    if (!QUERY_KEYS.has(key)) {
      throw new ConfigError(`${where}: unknown option ${key}; allowed: ${[...QUERY_KEYS].join(", ")}`);
    }
  }
  if (!https && !loopback(url.hostname)) {
    throw new ConfigError(`${where}: plain-HTTP transit:// is allowed only on a loopback address; use transit+https://`);
  }
  const mount = url.searchParams.get("mount") ?? "transit";
  const timeoutMs = 1000 * Number(url.searchParams.get("timeout") ?? 10);
  if (!(timeoutMs > 0)) throw new ConfigError(`${where}: timeout must be a number of seconds`);
  const tokenFile = url.searchParams.get("token_file");
  let token;
  if (tokenFile) {
    token = readPrivateFile(tokenFile, "KMS token file");
    if (!token) throw new InvalidKEK(`the KMS token file ${tokenFile} is empty`);
  } else {
    token = TOKEN_ENVS.map((name) => (env[name] ?? "").trim()).find(Boolean);
    if (!token) {
      throw new InvalidKEK(
        "the Transit KEK needs a token: set BAO_TOKEN or VAULT_TOKEN, or add token_file=PATH (mode 0600) to the kek URL",
      );
    }
  }
  const base = `${https ? "https" : "http"}://${url.host}`;
  const kekId = `transit:${url.hostname}/${mount}/${keyName}`;
  const wrong = () =>
    new WrongKEK(`the Transit key ${keyName} at ${base} does not open this keyring (another key, or another KMS)`);

  async function call(path, body) {
    let response;
    try {
      response = await fetch(`${base}/v1/${mount}/${path}/${keyName}`, {
        method: "POST",
        headers: { "X-Vault-Token": token, "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      throw new KMSError(
        `the KMS at ${base} is unreachable (${err?.cause?.code ?? err?.name}); keyturn does not fall back to any local key`,
      );
    }
    if (response.ok) return (await response.json()).data;
    if (response.status === 400) throw wrong();
    if (response.status === 403) {
      throw new KMSError(
        `the KMS at ${base} refused the token (permission denied): check ${TOKEN_ENVS.join("/")} or token_file`,
      );
    }
    if (response.status === 404) throw new KMSError(`the KMS at ${base} has no Transit key ${keyName} at mount ${mount}`);
    throw new KMSError(`the KMS at ${base} is sealed or unavailable (HTTP ${response.status})`);
  }

  return {
    kekId,
    source: spec.split("?")[0],
    /** A wrapped DEK (`vault:v1:…`) unwrapped by the KMS, its AAD digest checked. */
    async unwrap(wrapped, aad) {
      const data = await call("decrypt", { ciphertext: wrapped });
      const plain = Buffer.from(String(data?.plaintext ?? ""), "base64");
      const expected = createHash("sha256").update(aad).digest();
      if (plain.length !== DIGEST + 32 || !timingSafeEqual(plain.subarray(0, DIGEST), expected)) throw wrong();
      return plain.subarray(DIGEST);
    },
    toJSON() {
      return { kekId, source: spec.split("?")[0] };
    },
  };
}
