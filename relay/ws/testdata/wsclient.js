// A WebSocket client on Node's "ws" package, driven by the Go tests in
// node_test.go: it connects to the URL in argv[2] with the bearer token in
// PGRELAY_TOKEN, performs the scenario in argv[3] once open, and reports
// what it sees as one JSON object per line on stdout.
'use strict';
const WebSocket = require('ws');

const [url, scenario] = process.argv.slice(2);
const report = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const ws = new WebSocket(url, {
  headers: { Authorization: 'Bearer ' + process.env.PGRELAY_TOKEN },
  // The silent scenario plays a client that vanished: it never answers.
  autoPong: scenario !== 'silent',
});

ws.on('open', () => {
  report({ open: true });
  switch (scenario) {
    case 'fragments':
      // A text message in three frames with a ping between two of them,
      // then a binary message in two frames.
      ws.send('{"hello":', { fin: false });
      ws.ping(Buffer.from('between fragments'));
      ws.send('"relay"', { fin: false });
      ws.send('}', { fin: true });
      ws.send(Buffer.from([0, 1, 2, 255]), { binary: true, fin: false });
      ws.send(Buffer.from([3, 4]), { binary: true, fin: true });
      report({ sent: true });
      break;
    case 'ping':
      ws.ping(Buffer.from('pgrelay-ping-42'));
      break;
    case 'close':
      ws.close(4321, 'bye from node');
      break;
    case 'oversized':
      ws.send('x'.repeat(5 * 1024));
      break;
    case 'oversized-binary-fragments':
      ws.send(Buffer.alloc(3000), { binary: true, fin: false });
      ws.send(Buffer.alloc(3000), { binary: true, fin: true });
      break;
    case 'listen':
    case 'silent':
      break;
    default:
      report({ error: 'unknown scenario ' + scenario });
      process.exit(2);
  }
});
ws.on('message', (data, isBinary) => report({ message: data.toString(), binary: isBinary }));
ws.on('ping', (data) => report({ ping: data.toString() }));
ws.on('pong', (data) => report({ pong: data.toString() }));
ws.on('close', (code, reason) => {
  report({ close: code, reason: reason.toString() });
  process.exit(0);
});
ws.on('error', (err) => report({ error: err.message }));
// The test ends the client by closing its stdin.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
