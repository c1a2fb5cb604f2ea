// Bench peer: a WebSocket echo/broadcast server on uWebSockets.js or ws,
// following the same contract as foreman's `echo` and `broadcast` examples:
//
//   node server.js --impl uws|ws --mode broadcast|echo \
//        --listen websocket://127.0.0.1:PORT [--count 1] [--tick-ms 0] \
//        [--tls-cert CERT.pem --tls-key KEY.pem]
//
// With --tls-cert and --tls-key it serves wss:// (uWebSockets.js's SSLApp;
// ws under Node's https server).
//
// Prints `listening on websocket://HOST:PORT` once bound; broadcast sends every
// text message to every connection (sender included); echo returns it to its
// sender; SIGTERM closes every client with 1001 and exits. Node is single
// threaded, so only --count 1 is served; anything else exits with status 2.
"use strict";

const args = parseArgs(process.argv.slice(2));
const impl = args.impl || "uws";
const mode = args.mode || "broadcast";
const count = Number(args.count || "1");
const m = /^(?:websocket|ws):\/\/([^:/]+):(\d+)\/?$/.exec(args.listen || "websocket://127.0.0.1:0");
if (!m || !["uws", "ws"].includes(impl) || !["broadcast", "echo"].includes(mode)) {
  console.error("usage: server.js --impl uws|ws --mode broadcast|echo --listen websocket://HOST:PORT");
  process.exit(2);
}
if (count !== 1) {
  console.error(`server.js: node peers are single-process; --count ${count} is not supported`);
  process.exit(2);
}
const tls = args["tls-cert"] && args["tls-key"] ? { cert: args["tls-cert"], key: args["tls-key"] } : null;
const host = m[1];
const port = Number(m[2]);

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i + 1 < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  return out;
}

function announce(boundPort) {
  process.stdout.write(`listening on websocket://${host}:${boundPort}\n`);
}

if (impl === "uws") {
  const { loadNativeUws } = require("./uws-native.js");
  const uWS = loadNativeUws();
  const sockets = new Set();
  const app = tls ? uWS.SSLApp({ cert_file_name: tls.cert, key_file_name: tls.key }) : uWS.App();
  app.ws("/*", {
    compression: uWS.DISABLED,
    maxPayloadLength: 16 * 1024 * 1024,
    // publish() drops messages for a subscriber past maxBackpressure; a bench
    // counts lost deliveries, so allow a deep queue instead.
    maxBackpressure: 256 * 1024 * 1024,
    idleTimeout: 0,
    open: (ws) => {
      sockets.add(ws);
      if (mode === "broadcast") ws.subscribe("all");
    },
    message: (ws, message, isBinary) => {
      if (mode === "broadcast") app.publish("all", message, isBinary);
      else ws.send(message, isBinary);
    },
    close: (ws) => {
      sockets.delete(ws);
    },
  });
  let listenSocket = null;
  app.listen(host, port, (token) => {
    if (!token) {
      console.error(`server.js: cannot listen on ${host}:${port}`);
      process.exit(1);
    }
    listenSocket = token;
    announce(uWS.us_socket_local_port(token));
  });
  process.on("SIGTERM", () => {
    if (listenSocket) uWS.us_listen_socket_close(listenSocket);
    for (const ws of sockets) ws.end(1001, "server shutting down");
    // Let the event loop flush the close frames, then leave.
    setTimeout(() => process.exit(0), 100);
  });
} else {
  const { WebSocketServer } = require("ws");
  const options = { perMessageDeflate: false, clientTracking: true };
  let wss;
  if (tls) {
    const fs = require("fs");
    const server = require("https").createServer({ cert: fs.readFileSync(tls.cert), key: fs.readFileSync(tls.key) });
    wss = new WebSocketServer({ server, ...options });
    server.listen(port, host, () => announce(server.address().port));
  } else {
    wss = new WebSocketServer({ host, port, ...options });
    wss.on("listening", () => announce(wss.address().port));
  }
  wss.on("connection", (ws) => {
    ws.on("message", (data, isBinary) => {
      if (mode === "broadcast") {
        for (const client of wss.clients) client.send(data, { binary: isBinary });
      } else {
        ws.send(data, { binary: isBinary });
      }
    });
    ws.on("error", () => {});
  });
  process.on("SIGTERM", () => {
    for (const ws of wss.clients) ws.close(1001, "server shutting down");
    wss.close();
    setTimeout(() => process.exit(0), 100);
  });
}
