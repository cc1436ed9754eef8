// Socket.IO 4.8 peer of pushsvc for bench/peer.py: one node of a cluster on one Redis.
//
//   node server.js --port P --http-port H --redis redis://127.0.0.1:R/0 --adapter redis|sharded
//
// Clients connect over the websocket transport only and name their user in the handshake
// (auth {user} or query user=); each socket joins room "user:<id>". POST /publish on the HTTP
// port ({"user": "u1", "data": ...} or {"all": true, "data": ...}) emits "msg" with `data` to
// that room or to everyone through the adapter, so the other node gets it over Redis the way
// pushsvc's POST /v1/messages crosses Redis. GET /readyz answers 200 once the adapter is up;
// GET /stats gives the node's local socket count.
"use strict";

const http = require("node:http");
const { parseArgs } = require("node:util");
const { Server } = require("socket.io");
const { createAdapter, createShardedAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const { values: opts } = parseArgs({
  options: {
    port: { type: "string" },
    "http-port": { type: "string" },
    redis: { type: "string", default: "redis://127.0.0.1:6379/0" },
    adapter: { type: "string", default: "redis" },
    host: { type: "string", default: "127.0.0.1" },
  },
});
if (!opts.port || !opts["http-port"] || !["redis", "sharded"].includes(opts.adapter)) {
  console.error("usage: server.js --port P --http-port H --redis URL --adapter redis|sharded");
  process.exit(2);
}

async function main() {
  const pub = createClient({ url: opts.redis });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on("error", (err) => console.error("redis:", err.message));
  await Promise.all([pub.connect(), sub.connect()]);
  const adapter = opts.adapter === "sharded" ? createShardedAdapter(pub, sub) : createAdapter(pub, sub);

  const io = new Server({ transports: ["websocket"], adapter });
  io.use((socket, next) => {
    const user = socket.handshake.auth?.user ?? socket.handshake.query?.user;
    if (typeof user !== "string" || user === "") return next(new Error("no user"));
    socket.data.user = user;
    next();
  });
  io.on("connection", (socket) => socket.join(`user:${socket.data.user}`));
  io.listen(Number(opts.port), { host: opts.host });

  const api = http.createServer((req, res) => {
    const answer = (status, body) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (req.method === "GET" && req.url === "/readyz") return answer(200, { ready: true });
    if (req.method === "GET" && req.url === "/stats") {
      return answer(200, { sockets: io.of("/").sockets.size, rss: process.memoryUsage().rss });
    }
    if (req.method !== "POST" || req.url !== "/publish") return answer(404, { error: "not found" });
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        return answer(400, { error: "bad JSON" });
      }
      if (body.all === true) io.emit("msg", body.data);
      else if (typeof body.user === "string") io.to(`user:${body.user}`).emit("msg", body.data);
      else return answer(400, { error: "user or all needed" });
      answer(202, { accepted: true });
    });
  });
  api.keepAliveTimeout = 60_000;
  api.listen(Number(opts["http-port"]), opts.host);

  const stop = () => {
    io.close();
    api.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 3000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  console.log(`socket.io ${opts.adapter} adapter: ws :${opts.port}, http :${opts["http-port"]}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
