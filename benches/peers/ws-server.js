// Peer for the load harness: a plain `ws` broadcast server, what a user would
// write instead of running Palaver. Every text message from any client is
// sent to every connected client (the sender included). No auth, no storage.
//
//   node ws-server.js [PORT]        (or PORT=N; 0 picks a free port)
//
// Prints `ready: 127.0.0.1:PORT` once listening.
'use strict';
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
// The defaults a user gets: no per-message deflate (the ws default for servers).
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });

wss.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => {
    if (isBinary) return;
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(data, { binary: false });
    }
  });
  socket.on('error', () => {});
});

wss.on('listening', () => {
  console.log(`ready: 127.0.0.1:${wss.address().port}`);
});

process.on('SIGTERM', () => process.exit(0));
