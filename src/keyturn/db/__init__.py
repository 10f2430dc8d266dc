"""The database layer: connections, keyturn's own tables, the keyring lock, column binding."""
