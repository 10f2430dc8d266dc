"""Keys kept in the database: the keyring's wrapped DEKs and the audit log's key and log."""
