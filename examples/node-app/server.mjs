// A minimal Node web app that keeps each user's third-party API key in its
// SQLite database, as TREK does, encrypted with keyturn.
//
//   PUT /users/:id/api-key   body: the key       -> 204, stored as a kt1 token
//   GET /users/:id/api-key                       -> 200, the key (for the app's own use)
//   GET /users/:id                               -> 200, {"id", "name", "apiKey": "********"}
//
// Usage: KEYTURN_KEK=... node server.mjs DATABASE PORT

import { createServer } from "node:http";
import Database from "better-sqlite3";
import { fromBetterSqlite3, openKeyring } from "keyturn";

const [database = "app.db", port = "8080"] = process.argv.slice(2);
const db = new Database(database, { timeout: 30000 });
const keyring = await openKeyring({
  kek: process.env.KEYTURN_KEK_SPEC ?? "env:KEYTURN_KEK",
  db: fromBetterSqlite3(db),
  refreshSeconds: Number(process.env.KEYTURN_REFRESH_SECONDS ?? 30),
});
const context = "users.api_key";
const findUser = db.prepare("SELECT id, name, api_key FROM users WHERE id = ?");
const saveKey = db.prepare("UPDATE users SET api_key = ? WHERE id = ?");

async function handle(request, response) {
  const match = /^\/users\/(\d+)(\/api-key)?$/.exec(request.url);
  const user = match && findUser.get(Number(match[1]));
  if (!user) return reply(response, 404, { error: "no such user" });
  if (match[2] && request.method === "PUT") {
    let body = "";
    for await (const chunk of request) body += chunk;
    saveKey.run(await keyring.encrypt(body, { context }), user.id);
    return reply(response, 204);
  }
  if (match[2]) return reply(response, 200, { apiKey: await keyring.decrypt(user.api_key, { context }) });
  return reply(response, 200, { id: user.id, name: user.name, apiKey: user.api_key ? "********" : null });
}

function reply(response, status, body) {
  response.writeHead(status, body ? { "Content-Type": "application/json" } : {});
  response.end(body ? JSON.stringify(body) : undefined);
}

createServer((request, response) =>
  handle(request, response).catch((err) => {
    console.error(`error: ${err.name}`); // never the secret, never the token
    reply(response, 500, { error: err.name });
  }),
).listen(Number(port), "127.0.0.1", () => console.log(`listening on 127.0.0.1:${port}`));
