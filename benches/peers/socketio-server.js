// Peer for the load harness: a Socket.IO server with one room. Every client
// joins room "bench" on connect; a "msg" event from any client is emitted to
// the room (the sender included). No auth, no storage.
//
//   node socketio-server.js [PORT]  (or PORT=N; 0 picks a free port)
//
// Prints `ready: 127.0.0.1:PORT` once listening. Clients speak Engine.IO v4
// over WebSocket: ws://127.0.0.1:PORT/socket.io/?EIO=4&transport=websocket
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
const server = http.createServer();
// WebSocket only, as the harness connects; everything else as shipped.
const io = new Server(server, { transports: ['websocket'], serveClient: false });

io.on('connection', (socket) => {
  socket.join('bench');
  socket.on('msg', (data) => {
    io.to('bench').emit('msg', data);
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log(`ready: 127.0.0.1:${server.address().port}`);
});

process.on('SIGTERM', () => process.exit(0));
