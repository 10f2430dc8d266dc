// examples/node-app as its README walks through it: a plaintext database taken
// over by the CLI, the app serving, and a rotation while it serves.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import Database from "better-sqlite3";
import { PYTHON, freePort } from "./helpers.js";



test("the example app: taken over, serving, and rotated while it serves", async () => {
  const dir = mkdtempSync(join(tmpdir(), "keyturn-example-"));
  const db = new Database(join(dir, "app.db"));
  db.exec("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, api_key TEXT)");
  const insert = db.prepare("INSERT INTO users VALUES (?, ?, ?)");
  db.transaction(() => {
    insert.run(1, "ada", "sk_live_ada");
    insert.run(2, "bob", null);
    for (let i = 3; i <= 3000; i++) insert.run(i, `user${i}`, `sk_live_${i}`);
  })();
  writeFileSync(
    join(dir, "keyturn.toml"),
    'database = "sqlite:///app.db"\n[[columns]]\ntable = "users"\ncolumn = "api_key"\n' +
      "[apps]\nrefresh_seconds = 0.2\nwrite_margin_seconds = 0.2\n",
  );
  const env = { ...process.env, KEYTURN_KEK: randomBytes(32).toString("hex"), KEYTURN_REFRESH_SECONDS: "0.2" };
  const cli = (...args) => execFileSync(PYTHON, ["-m", "keyturn", ...args], { cwd: dir, env, encoding: "utf8" });
  cli("init");
  cli("encrypt-existing");
  assert.match(db.prepare("SELECT api_key FROM users WHERE id = 1").pluck().get(), /^kt1:1:/);

  // The example as written, its `keyturn` import pointed at this package.
  const source = readFileSync(new URL("../../../examples/node-app/server.mjs", import.meta.url), "utf8");
  const script = new URL(`./.example-${randomBytes(4).toString("hex")}.mjs`, import.meta.url).pathname;
  writeFileSync(script, source.replace('from "keyturn"', 'from "../src/index.js"'));
  const port = await freePort();
  const server = spawn(process.execPath, [script, join(dir, "app.db"), String(port)], { env, stdio: ["ignore", "pipe", "pipe"] });
  let errors = "";
  server.stderr.on("data", (chunk) => (errors += chunk));
  const base = `http://127.0.0.1:${port}`;
  try {
    await new Promise((resolve) => server.stdout.once("data", resolve));
    assert.equal((await fetch(`${base}/users/2/api-key`, { method: "PUT", body: "sk_live_bob" })).status, 204);
    assert.deepEqual(await (await fetch(`${base}/users/1`)).json(), { id: 1, name: "ada", apiKey: "********" });
    assert.deepEqual(await (await fetch(`${base}/users/1/api-key`)).json(), { apiKey: "sk_live_ada" });

    const rotation = spawn(PYTHON, ["-m", "keyturn", "rotate", "--yes", "--max-rate", "3000"], { cwd: dir, env, stdio: "ignore" });
    const rotated = new Promise((resolve) => rotation.on("exit", resolve));
    let served = 0;
    let done = false;
    rotated.then(() => (done = true));
    while (!done) {
      const id = 3 + (served % 2998);
      const reply = await fetch(`${base}/users/${id}/api-key`);
      assert.equal(reply.status, 200, errors);
      assert.deepEqual(await reply.json(), { apiKey: `sk_live_${id}` });
      if (served % 10 === 0) {
        const put = await fetch(`${base}/users/${id}/api-key`, { method: "PUT", body: `sk_live_${id}` });
        assert.equal(put.status, 204, errors);
      }
      served += 1;
    }
    assert.equal(await rotated, 0);
    assert.ok(served > 20, "the app served during the rotation");
    await sleep(300); // past refresh_seconds: new keys are sealed under v2
    assert.equal((await fetch(`${base}/users/2/api-key`, { method: "PUT", body: "sk_live_bob_2" })).status, 204);
    assert.match(db.prepare("SELECT api_key FROM users WHERE id = 2").pluck().get(), /^kt1:2:/);
    assert.deepEqual(await (await fetch(`${base}/users/2/api-key`)).json(), { apiKey: "sk_live_bob_2" });
    const verified = JSON.parse(cli("verify", "--json"));
    assert.equal(verified.failed, 0);
  } finally {
    server.kill();
    rmSync(script);
    db.close();
  }
  assert.equal(errors, "");
});
