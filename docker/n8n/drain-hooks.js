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
//
// And: a 2xx answer to a webhook that does not carry ANSWER_HEADER is refused with 503. Every
// workflow's Respond to Webhook node sets that header; n8n's own fallback answers do not. n8n main
// answers a webhook 200 with no data when the execution ended without its answer reaching main
// (webhook-helpers.js: "Workflow executed successfully but no data was returned", or an empty 200
// in responseNode mode), which happens when Redis goes away while main waits on the worker: Meta
// took that 200 for a stored message and never retried it. A 503 makes Meta retry; a retry of a
// message that was stored after all is a REPLAY the intake answers 200 with the header.
'use strict';

const DRAIN_SECONDS = Number(process.env.RESTOBOT_DRAIN_SECONDS || 15);
const WEBHOOK_PATH = /^\/webhook(-waiting)?\//;
const ANSWER_HEADER = 'x-restobot-answer';

let draining = false;
let inFlight = 0;
let refused = 0; // 2xx answers without a workflow's answer, turned into 503

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

// The header is the workflows' word to this gate, not the client's: it is removed once checked.
function withoutAnswerHeader(args) {
  return args.map((arg) => {
    if (!arg || typeof arg !== 'object' || Array.isArray(arg)) return arg;
    return Object.fromEntries(Object.entries(arg).filter(([name]) => name.toLowerCase() !== ANSWER_HEADER));
  });
}

function answeredByAWorkflow(res, args) {
  if (res.hasHeader(ANSWER_HEADER)) return true;
  return args.some((arg) => arg && typeof arg === 'object' && !Array.isArray(arg)
    && Object.keys(arg).some((name) => name.toLowerCase() === ANSWER_HEADER));
}

// Refuse, at the moment n8n sends its status line, a 2xx no workflow wrote.
function requireWorkflowAnswer(req, res) {
  const writeHead = res.writeHead;
  res.writeHead = function (statusCode, ...args) {
    const answered = answeredByAWorkflow(res, args);
    res.removeHeader(ANSWER_HEADER);
    if (statusCode >= 200 && statusCode < 300 && !answered) {
      const path = (req.url || '').split('?')[0]; // the verify handshake's query holds its token
      console.warn(`[restobot] n8n answered ${req.method} ${path} ${statusCode} without a workflow's answer: refused with 503`);
      refused += 1;
      res.setHeader('Retry-After', '5');
      return writeHead.call(this, 503, ...withoutAnswerHeader(args.filter((arg) => typeof arg !== 'string')));
    }
    return writeHead.call(this, statusCode, ...withoutAnswerHeader(args));
  };
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
    requireWorkflowAnswer(req, res);
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
  value: { gate, drained, ANSWER_HEADER, state: () => ({ draining, inFlight, refused }) },
  enumerable: false,
});
