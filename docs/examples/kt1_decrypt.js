// Decrypt a keyturn kt1 token with Node's built-in crypto (no dependencies).
const crypto = require("crypto");

function decryptKt1(token, dek, context) {
  const parts = token.split(":");
  if (parts.length !== 3 || parts[0] !== "kt1" || !/^[1-9][0-9]{0,9}$/.test(parts[1])) {
    throw new Error("invalid token");
  }
  const blob = Buffer.from(parts[2], "base64url");
  if (blob.length < 28) throw new Error("invalid token");
  const nonce = blob.subarray(0, 12);
  const tag = blob.subarray(blob.length - 16);
  const ciphertext = blob.subarray(12, blob.length - 16);
  const decipher = crypto.createDecipheriv("aes-256-gcm", dek, nonce);
  decipher.setAAD(Buffer.from(`kt1:${parts[1]}:${context}`, "utf8"));
  decipher.setAuthTag(tag);
  return Buffer.concat([decipher.update(ciphertext), decipher.final()]).toString("utf8");
}

// The context of a value in a `bind = "row"` column: each primary-key part with
// "\\" and "," escaped by a backslash, joined with ",".
function rowContext(table, column, pk) {
  const parts = pk.map((v) => String(v).replace(/\\/g, "\\\\").replace(/,/g, "\\,"));
  return `${table}.${column}#${parts.join(",")}`;
}

module.exports = { decryptKt1, rowContext };

if (require.main === module) {
  const vectors = require(process.argv[2]);
  for (const v of vectors.valid) {
    const out = decryptKt1(v.token, Buffer.from(v.key, "hex"), v.context);
    if (out !== v.plaintext) throw new Error(`mismatch for ${v.token}`);
  }
  for (const c of vectors.contexts) {
    const got = rowContext(c.table, c.column, c.pk);
    if (got !== c.context) throw new Error(`context mismatch: ${got} != ${c.context}`);
  }
  console.log(`${vectors.valid.length} vectors decrypted, ${vectors.contexts.length} contexts built`);
}
