// A WebSocket client on Node's "ws" package that speaks the GraphQL
// protocols message by message, for the Go tests to send what the libraries
// never would (a second connection_init, a duplicate id, garbage).
// argv[2] is a JSON object {"url": "ws://…/graphql", "protocol": "graphql-transport-ws",
// "headers": {…}}; stdin lines are JSON commands: {"send": <value sent as JSON text>},
// {"text": "<sent as is>"}, {"binary": true}, {"pause": true} (stop reading
// the socket), {"resume": true}. Reported on stdout, one JSON
// object per line: {"open": true, "protocol": …}, {"message": <parsed>},
// {"closed": code, "reason": "…"}, {"unexpected": status}.
'use strict';
const WebSocket = require('ws');
const readline = require('readline');

const cfg = JSON.parse(process.argv[2]);
const report = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const protocols = cfg.protocol === undefined ? [] : [cfg.protocol];
const ws = new WebSocket(cfg.url, protocols, { headers: cfg.headers || {} });

// Commands that arrive before the handshake is done wait for it.
const queued = [];
ws.on('open', () => {
  report({ open: true, protocol: ws.protocol });
  queued.splice(0).forEach(run);
});
// Large messages are reported by type, id and size only.
ws.on('message', (data) => {
  let m;
  try {
    m = JSON.parse(data.toString());
  } catch (e) {
    m = data.toString();
  }
  if (data.length > 4096 && m && typeof m === 'object') m = { type: m.type, id: m.id, size: data.length };
  report({ message: m });
});
// Exits once what was reported has been written out.
const exit = () => process.stdout.write('', () => process.exit(0));
ws.on('close', (code, reason) => {
  report({ closed: code, reason: reason.toString() });
  exit();
});
ws.on('unexpected-response', (req, res) => {
  let body = '';
  res.on('data', (d) => { body += d; });
  res.on('end', () => {
    report({ unexpected: res.statusCode, body });
    exit();
  });
});
ws.on('error', (err) => report({ wsError: err.message }));

const rl = readline.createInterface({ input: process.stdin });
function run(cmd) {
  if ('send' in cmd) ws.send(JSON.stringify(cmd.send));
  else if ('text' in cmd) ws.send(cmd.text);
  else if (cmd.binary) ws.send(Buffer.from([1, 2, 3]), { binary: true });
  // A client that stops reading, and one that starts again.
  else if (cmd.pause) ws._socket.pause();
  else if (cmd.resume) ws._socket.resume();
}
rl.on('line', (line) => {
  const cmd = JSON.parse(line);
  if (ws.readyState === WebSocket.CONNECTING) queued.push(cmd);
  else run(cmd);
});
rl.on('close', () => process.exit(0));
