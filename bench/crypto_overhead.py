"""Store.encrypt / Store.decrypt against bare AESGCM + base64url, in one process.

Usage: .venv/bin/python bench/crypto_overhead.py [--calls N] [--size BYTES]

Both sides use the same key, plaintext and AAD shape; the baseline does only
what any AES-GCM token code must do (random nonce, AESGCM with a prebuilt key
object, base64url). Runs alternate, best of several rounds is kept, and the
ratio keyturn/baseline is printed (goal: at most 1.5x for both).
"""

from __future__ import annotations

import argparse
import base64
import os
import sqlite3
import sys
import tempfile
import timeit
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import keyturn
from keyturn.cli import cli


def make_store(workdir: Path) -> keyturn.Store:
    sqlite3.connect(workdir / "app.db").close()
    (workdir / "keyturn.toml").write_text('database = "sqlite:///app.db"\n')
    os.environ["KEYTURN_KEK"] = os.urandom(32).hex()
    cli.main(["--config", str(workdir / "keyturn.toml"), "init"], standalone_mode=False)
    return keyturn.open(workdir / "keyturn.toml")  # refreshes at most every 30 s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=40, help="plaintext bytes (an API key)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp))
        version = store.active_version
        aead = AESGCM(store.keyring._active.key)  # the same key, in its own AESGCM
        context = "integrations.api_key"
        text = "k" * args.size
        data = text.encode()
        prefix = f"kt1:{version}:"
        aad = (prefix + context).encode()

        def bare_encrypt() -> str:
            nonce = os.urandom(12)
            blob = nonce + aead.encrypt(nonce, data, aad)
            return prefix + base64.urlsafe_b64encode(blob).rstrip(b"=").decode()

        token = bare_encrypt()
        payload = token.split(":", 2)[2]

        def bare_decrypt() -> bytes:
            blob = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            return aead.decrypt(blob[:12], blob[12:], aad)

        def kt_encrypt() -> str:
            return store.encrypt(text, context=context)

        def kt_decrypt() -> str:
            return store.decrypt(token, context=context)

        assert kt_decrypt() == text and bare_decrypt() == data
        pairs = {
            "encrypt": (kt_encrypt, bare_encrypt),
            "decrypt": (kt_decrypt, bare_decrypt),
        }
        print(
            f"{args.calls} calls x {args.rounds} rounds, {args.size}-byte plaintext, "
            f"Python {sys.version.split()[0]}"
        )
        print(f"{'op':<8} {'keyturn µs':>11} {'bare µs':>9} {'ratio':>7}")
        worst = 0.0
        for name, (ours, bare) in pairs.items():
            best_ours = best_bare = float("inf")
            for _ in range(args.rounds):
                best_bare = min(best_bare, timeit.timeit(bare, number=args.calls))
                best_ours = min(best_ours, timeit.timeit(ours, number=args.calls))
            us_ours = best_ours / args.calls * 1e6
            us_bare = best_bare / args.calls * 1e6
            ratio = us_ours / us_bare
            worst = max(worst, ratio)
            print(f"{name:<8} {us_ours:>11.2f} {us_bare:>9.2f} {ratio:>6.2f}x")
        store.close()
        print(f"goal: at most 1.5x; worst {worst:.2f}x -> {'met' if worst <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
