// A Socket.IO 4.8 node for `loadtest/bench.sh peers`: the server a Socket.IO user would write
// for wsgate's broadcast scenario. WebSocket transport only (no long-polling upgrade dance,
// no compression), rooms across nodes through @socket.io/redis-adapter over one Redis.
//
//   PORT=19301 REDIS_URL=redis://127.0.0.1:16391 node socketio-server.js
//
// Events: `join(room, ack)` joins a room; `publish(room, data, ack)` emits `msg` with `data`
// to the room's members on every node except the publisher (wsgate's `exclude_self`).
"use strict";
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const Redis = require("ioredis");

const port = Number(process.env.PORT || 3000);
const pub = new Redis(process.env.REDIS_URL || "redis://127.0.0.1:6379");
const sub = pub.duplicate();

const io = new Server(port, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  httpCompression: false,
  adapter: createAdapter(pub, sub),
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack();
  });
  socket.on("publish", (room, data, ack) => {
    socket.to(room).emit("msg", data);
    if (typeof ack === "function") ack();
  });
});

const stop = () => io.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
console.log(`socket.io listening on ${port}`);
