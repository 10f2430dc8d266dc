// The app's own database driver, seen through one small interface:
// { query(sql, params) -> Promise<rows as objects> }. keyturn issues only two
// reads of its own tables (keyturn_meta, keyturn_keys), with no parameters.

/** better-sqlite3 (v12): `fromBetterSqlite3(new Database("app.db"))`. */
export function fromBetterSqlite3(database) {
  return {
    async query(sql, params) {
      return database.prepare(sql).all(...params);
    },
  };
}

/** node-postgres: a `pg.Pool` or a connected `pg.Client`. */
export function fromPg(pool) {
  return {
    async query(sql, params) {
      return (await pool.query(sql, params)).rows;
    },
  };
}

/** mysql2/promise: a pool or a connection (MariaDB, MySQL). */
export function fromMysql2(pool) {
  return {
    async query(sql, params) {
      const [rows] = await pool.query(sql, params);
      return rows;
    },
  };
}
