"""KEK providers: where the key-encryption key comes from (env var, key file, Transit)."""
