"""The private core: the kt1 token format, row contexts, the keyring maths and local KEK
wrapping. Pure functions and values, no I/O (checked by import-linter)."""
