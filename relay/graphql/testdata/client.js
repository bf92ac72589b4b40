// GraphQL subscription clients built on the npm libraries users run, driven
// by the Go tests. argv[2] is {"library": "graphql-ws" | "apollo" | "legacy"};
// one process holds any number of clients of that library, so that a test
// pays Node's start-up once. Commands arrive as JSON lines on stdin:
//   {"client": "u", "connect": {"url": "ws://…/graphql", "token": "<jwt>",
//      "tokenIn": "payload" | "header" | "query", "payload": {…connection_init payload…}}}
//   {"client": "u", "subscribe": {"name": "a", "query": "…", "variables": {…}}}
//   {"client": "u", "unsubscribe": "a"}
//   {"client": "u", "introspect": "a"}  (graphql-js's introspection query)
// and what each client sees is reported as one JSON object per line on
// stdout, with its "client": {"open": true}, {"connected": true},
// {"closed": code, "reason": "…"}, {"op": "a", "next": {…result…}},
// {"op": "a", "error": …}, {"op": "a", "complete": true},
// {"op": "a", "schema": "<SDL graphql-js built from the introspection>"}.
'use strict';
const WebSocket = require('ws');
const readline = require('readline');

const cfg = JSON.parse(process.argv[2]);
const write = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const describe = (e) => {
  if (Array.isArray(e)) return { errors: e.map((x) => ({ message: x.message, locations: x.locations, path: x.path, extensions: x.extensions })) };
  if (e && e.errors) return describe(e.errors);
  if (e && typeof e.code === 'number') return { code: e.code, reason: e.reason };
  if (e && e.message) return { message: e.message };
  return { message: String(e) };
};

// connect makes one client of the configured library: c is
// {url, token, tokenIn, payload}. It returns subscribe(name, request,
// introspection) => unsubscribe.
function connect(clientName, c) {
  const report = (o) => write({ client: clientName, ...o });
  let url = c.url;
  const headers = {};
  if (c.tokenIn === 'header') headers.Authorization = 'Bearer ' + c.token;
  if (c.tokenIn === 'query') url += (url.includes('?') ? '&' : '?') + 'access_token=' + encodeURIComponent(c.token);
  const connectionParams = c.payload || (c.tokenIn === 'payload' ? { authorization: 'Bearer ' + c.token } : {});

  // The libraries' own WebSocket, with the handshake headers, reporting the
  // close code the relay sent (the libraries do not all pass it on).
  class ReportingWebSocket extends WebSocket {
    constructor(address, protocols) {
      super(address, protocols, { headers });
      this.on('open', () => report({ open: true, protocol: this.protocol }));
      this.on('close', (code, reason) => report({ closed: code, reason: reason.toString() }));
    }
  }

  // observer reports what a subscription sees. An introspection result is
  // handed to graphql-js, which builds a client schema from it as GraphiQL
  // does, and reported as that schema's SDL.
  const observer = (name, introspection) => ({
    next: (r) => {
      if (!introspection) return report({ op: name, next: r });
      const { buildClientSchema, printSchema } = require('graphql');
      try {
        report({ op: name, schema: printSchema(buildClientSchema(r.data)) });
      } catch (e) {
        report({ op: name, schemaError: e.message, result: r });
      }
    },
    error: (e) => report({ op: name, error: describe(e) }),
    complete: () => report({ op: name, complete: true }),
  });

  let subscribe;
  switch (cfg.library) {
    case 'graphql-ws': {
      const { createClient } = require('graphql-ws');
      const client = createClient({
        url, webSocketImpl: ReportingWebSocket, connectionParams, lazy: false, retryAttempts: 0,
        on: { connected: () => report({ connected: true }) },
        onNonLazyError: () => {},
      });
      subscribe = (name, req, introspection) => client.subscribe(req, observer(name, introspection));
      break;
    }
    case 'apollo': {
      const { createClient } = require('graphql-ws');
      const { ApolloClient, InMemoryCache, gql } = require('@apollo/client');
      const { GraphQLWsLink } = require('@apollo/client/link/subscriptions');
      const link = new GraphQLWsLink(createClient({
        url, webSocketImpl: ReportingWebSocket, connectionParams, retryAttempts: 0,
        on: { connected: () => report({ connected: true }) },
      }));
      const apollo = new ApolloClient({ link, cache: new InMemoryCache() });
      subscribe = (name, req, introspection) => {
        const sub = apollo.subscribe({ query: gql(req.query), variables: req.variables }).subscribe(observer(name, introspection));
        return () => sub.unsubscribe();
      };
      break;
    }
    case 'legacy': {
      const { SubscriptionClient } = require('subscriptions-transport-ws');
      const client = new SubscriptionClient(url, {
        connectionParams, reconnect: false,
        connectionCallback: (err) => report(err ? { connection_error: describe(err) } : { connected: true }),
      }, ReportingWebSocket);
      subscribe = (name, req, introspection) => {
        const sub = client.request(req).subscribe(observer(name, introspection));
        return () => sub.unsubscribe();
      };
      break;
    }
    default:
      report({ fatal: 'unknown library ' + cfg.library });
      process.exit(2);
  }

  return subscribe;
}

const clients = {};
const running = {};
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.connect) {
    clients[cmd.client] = connect(cmd.client, cmd.connect);
  } else if (cmd.subscribe) {
    running[cmd.client + '/' + cmd.subscribe.name] = clients[cmd.client](cmd.subscribe.name, { query: cmd.subscribe.query, variables: cmd.subscribe.variables });
  } else if (cmd.unsubscribe) {
    running[cmd.client + '/' + cmd.unsubscribe]();
    write({ client: cmd.client, op: cmd.unsubscribe, unsubscribed: true });
  } else if (cmd.introspect) {
    const { getIntrospectionQuery } = require('graphql');
    running[cmd.client + '/' + cmd.introspect] = clients[cmd.client](cmd.introspect, { query: getIntrospectionQuery() }, true);
  }
});
rl.on('close', () => process.exit(0));
