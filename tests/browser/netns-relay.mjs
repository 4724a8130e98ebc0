// Reaches a TCP port on a network namespace's loopback from this one's, for a browser
// that runs in the namespace but is driven from here (Firefox's WebDriver BiDi listens
// on 127.0.0.1 only, and answers only requests addressed to 127.0.0.1:port):
//   node netns-relay.mjs listen NAMESPACE PORT   here: listens on 127.0.0.1:PORT and,
//                                                for each connection, runs the other
//                                                half in the namespace over its stdio;
//   node netns-relay.mjs connect PORT            there: joins stdio to 127.0.0.1:PORT.
// Needs root (ip netns exec), as the test that makes the namespace does.

import { spawn } from "node:child_process";
import net from "node:net";
import { fileURLToPath } from "node:url";

const [mode, ...args] = process.argv.slice(2);
if (mode === "listen") {
  const [ns, port] = args;
  const self = fileURLToPath(import.meta.url);
  net
    .createServer((client) => {
      const half = spawn("ip", ["netns", "exec", ns, process.execPath, self, "connect", port], {
        stdio: ["pipe", "pipe", "inherit"],
      });
      client.pipe(half.stdin);
      half.stdout.pipe(client);
      client.on("error", () => half.kill());
      client.on("close", () => half.kill());
      half.on("exit", () => client.destroy());
    })
    .listen(Number(port), "127.0.0.1");
} else if (mode === "connect") {
  const socket = net.connect(Number(args[0]), "127.0.0.1");
  process.stdin.pipe(socket);
  socket.pipe(process.stdout);
  socket.on("error", () => process.exit(1));
  socket.on("close", () => process.exit(0));
} else {
  console.error("usage: netns-relay.mjs listen NAMESPACE PORT | connect PORT");
  process.exit(2);
}
