// What the Node tests share: the repository's keyturn CLI (Python) and a free port.

import { createServer } from "node:net";

/** The Python with keyturn installed: $KEYTURN_PYTHON, else the repository's .venv. */
export const PYTHON =
  process.env.KEYTURN_PYTHON ?? new URL("../../../.venv/bin/python", import.meta.url).pathname;

/** A free loopback port, from the OS. */
export function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}
