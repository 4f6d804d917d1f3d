// n8n external hooks (EXTERNAL_HOOK_FILES), loaded by n8n main and the worker.
//
// Why: in queue mode, n8n main answers a webhook with what the worker publishes back on
// Redis. When n8n main stops gracefully (docker stop, a deploy's restart) it closes its
// listening socket but keeps serving requests that arrive on the gateway's open keep-alive
// connections, then shuts its Redis subscriber down before those executions end; each
// such webhook is then answered 200 with no data, and Meta never retries it.
//
// What: from the SIGTERM on, every webhook request is refused with 503 (Meta retries it);
// and n8n's stop waits, up to RESTOBOT_DRAIN_SECONDS, until the webhook requests already
// accepted have been answered, before n8n shuts its subscriber down.
// (Not gated: the 404s of a starting n8n main before its webhooks are registered. n8n 2.40
// registers them through its publication service, which runs no hook when it is done.)
'use strict';

const DRAIN_SECONDS = Number(process.env.RESTOBOT_DRAIN_SECONDS || 15);
const WEBHOOK_PATH = /^\/webhook(-waiting)?\//;

let draining = false;
let inFlight = 0;

process.on('SIGTERM', () => {
  draining = true;
});
process.on('SIGINT', () => {
  draining = true;
});

function refuse(res, why) {
  res.writeHead(503, { 'Content-Type': 'text/plain', 'Retry-After': '5', Connection: 'close' });
  res.end(`${why}; retry\n`);
}

function track(res) {
  inFlight += 1;
  let done = false;
  const finished = () => {
    if (!done) {
      done = true;
      inFlight -= 1;
    }
  };
  res.on('finish', finished);
  res.on('close', finished);
}

// Put the gate in front of n8n's own request handlers (express), on n8n's HTTP server.
function gate(server) {
  const handlers = server.listeners('request');
  server.removeAllListeners('request');
  server.on('request', (req, res) => {
    if (!WEBHOOK_PATH.test(req.url || '')) {
      for (const handler of handlers) handler.call(server, req, res);
      return;
    }
    if (draining) {
      refuse(res, 'n8n main is stopping');
      return;
    }
    track(res);
    for (const handler of handlers) handler.call(server, req, res);
  });
}

async function drained() {
  draining = true;
  const deadline = Date.now() + DRAIN_SECONDS * 1000;
  while (inFlight > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  if (inFlight > 0) console.warn(`[restobot] ${inFlight} webhook request(s) still open after ${DRAIN_SECONDS} s`);
}

module.exports = {
  n8n: {
    ready: [
      async function (abstractServer) {
        if (abstractServer && abstractServer.server) gate(abstractServer.server);
      },
    ],
    stop: [drained],
  },
};
// For tests, on any node HTTP server. Not enumerable: n8n registers every enumerable key as a hook.
Object.defineProperty(module.exports, 'testing', {
  value: { gate, drained, state: () => ({ draining, inFlight }) },
  enumerable: false,
});
