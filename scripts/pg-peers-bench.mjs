// The PostgreSQL peers' side of scripts/bench-vs-pg-peers: the same phases as `errand bench`
// (bulk enqueue, one-at-a-time enqueue, drain, latency at a paced rate) against graphile-worker
// or pg-boss, on the database at URL. Prints one JSON object.
//
// Usage: node pg-peers-bench.mjs graphile|pgboss URL JOBS SINGLE CONCURRENCY RATE SECONDS
// (run from a folder where `npm install graphile-worker pg-boss pg` was done).

import { createRequire } from "node:module";
import { performance } from "node:perf_hooks";

const require = createRequire(process.cwd() + "/");
const [system, url, jobsArg, singleArg, concArg, rateArg, secondsArg] = process.argv.slice(2);
const JOBS = Number(jobsArg);
const SINGLE = Number(singleArg);
const CONCURRENCY = Number(concArg);
const RATE = Number(rateArg);
const SECONDS = Number(secondsArg);
const BATCH = 10_000;

const nowMs = () => performance.timeOrigin + performance.now();
const cpuS = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pct = (sorted, q) => sorted[Math.max(Math.ceil(q * sorted.length) - 1, 0)];

let done = 0;
const latencies = [];
function handle(payload) {
  if (payload && payload.t) latencies.push(nowMs() - payload.t);
  done += 1;
}

async function waitFor(n, limitS) {
  const deadline = Date.now() + limitS * 1000;
  while (done < n) {
    if (Date.now() > deadline) throw new Error(`only ${done} of ${n} jobs ran in ${limitS} s`);
    await sleep(2);
  }
}

async function graphile() {
  const { makeWorkerUtils, run } = require("graphile-worker");
  const utils = await makeWorkerUtils({ connectionString: url });
  await utils.migrate();
  const out = {};
  let t = performance.now();
  for (let i = 0; i < JOBS; i += BATCH) {
    const specs = [];
    for (let j = i; j < Math.min(i + BATCH, JOBS); j++) specs.push({ identifier: "noop", payload: { n: j } });
    await utils.addJobs(specs);
  }
  out.bulk_jobs_s = JOBS / ((performance.now() - t) / 1000);
  t = performance.now();
  for (let i = 0; i < SINGLE; i++) await utils.addJob("noop", { n: i });
  out.single_jobs_s = SINGLE / ((performance.now() - t) / 1000);
  const cpu0 = cpuS();
  t = performance.now();
  const runner = await run({
    connectionString: url,
    concurrency: CONCURRENCY,
    noHandleSignals: true,
    pollInterval: 1000,
    logger: new (require("graphile-worker").Logger)(() => () => {}),
    taskList: { noop: async (payload) => handle(payload) },
  });
  await waitFor(JOBS + SINGLE, 600);
  out.drain_jobs_s = (JOBS + SINGLE) / ((performance.now() - t) / 1000);
  out.cpu_s_per_100k = ((cpuS() - cpu0) * 100_000) / (JOBS + SINGLE);
  await latency((n) => utils.addJob("noop", { n, t: nowMs() }), out);
  await runner.stop();
  await utils.release();
  return out;
}

async function pgboss() {
  const PgBoss = require("pg-boss");
  const boss = new PgBoss({ connectionString: url, max: CONCURRENCY + 5 });
  boss.on("error", () => {});
  await boss.start();
  await boss.createQueue("noop");
  const out = {};
  let t = performance.now();
  for (let i = 0; i < JOBS; i += BATCH) {
    const jobs = [];
    for (let j = i; j < Math.min(i + BATCH, JOBS); j++) jobs.push({ name: "noop", data: { n: j } });
    await boss.insert(jobs);
  }
  out.bulk_jobs_s = JOBS / ((performance.now() - t) / 1000);
  t = performance.now();
  for (let i = 0; i < SINGLE; i++) await boss.send("noop", { n: i });
  out.single_jobs_s = SINGLE / ((performance.now() - t) / 1000);
  const cpu0 = cpuS();
  t = performance.now();
  // pg-boss 10's workers wait their polling interval (at least 0.5 s) after every fetch, so
  // one job per fetch runs at about 2 jobs/s per worker (measured: 25 such workers drained
  // ~20 jobs/s). Its best setting for throughput is batches: 5 workers taking up to
  // CONCURRENCY × 4 jobs per fetch, the handler running each batch's jobs at once.
  for (let w = 0; w < 5; w++) {
    await boss.work(
      "noop",
      { batchSize: CONCURRENCY * 4, pollingIntervalSeconds: 0.5 },
      async (jobs) => { for (const job of jobs) handle(job.data); },
    );
  }
  await waitFor(JOBS + SINGLE, 600);
  out.drain_jobs_s = (JOBS + SINGLE) / ((performance.now() - t) / 1000);
  out.cpu_s_per_100k = ((cpuS() - cpu0) * 100_000) / (JOBS + SINGLE);
  await latency((n) => boss.send("noop", { n, t: nowMs() }), out);
  await boss.stop({ graceful: false, wait: false });
  return out;
}

async function latency(push, out) {
  latencies.length = 0;
  const before = done;
  const total = Math.round(RATE * SECONDS);
  const start = nowMs();
  // Paced pushes, up to 64 in flight (as `errand bench` does), so a slow push does not lower
  // the offered rate.
  const inFlight = new Set();
  for (let i = 0; i < total; i++) {
    const due = start + (i * 1000) / RATE;
    const wait = due - nowMs();
    if (wait > 0) await sleep(wait);
    while (inFlight.size >= 64) await Promise.race(inFlight);
    const p = push(i).finally(() => inFlight.delete(p));
    inFlight.add(p);
  }
  await Promise.all(inFlight);
  await waitFor(before + total, 120);
  const sorted = [...latencies].sort((a, b) => a - b);
  out.latency_ms = { p50: pct(sorted, 0.5), p99: pct(sorted, 0.99), max: sorted[sorted.length - 1] };
}

const result = system === "graphile" ? await graphile() : await pgboss();
console.log(JSON.stringify({ system, ...result }));
process.exit(0);
