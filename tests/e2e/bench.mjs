// The web app's benchmark (run by `cargo xtask bench --web`, which serves the app and sets
// TUNELAB_URL): time from page load to the first training step with the model not cached and
// cached in browser storage, and step times on WebGPU (SwiftShader without a GPU) and on the
// wasm CPU backend, threaded and on one thread. Prints one JSON object on the last line.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const url = process.env.TUNELAB_URL;
if (!url) throw new Error('TUNELAB_URL must point at the served app');
const gpuSteps = Number(process.env.TUNELAB_BENCH_GPU_STEPS ?? 3);
const cpuSteps = Number(process.env.TUNELAB_BENCH_CPU_STEPS ?? 12);

const profile = mkdtempSync(join(tmpdir(), 'tunelab-bench-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking', '--no-first-run'],
});

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
}

/** Opens `query`, clicks Train as soon as it can, waits for `steps` steps; returns timings. */
async function run(page, query, steps) {
  await page.goto(url + query);
  await page.getByTestId('status').filter({ hasText: 'Ready.' }).waitFor({ timeout: 300_000 });
  await page.getByTestId('data-summary').waitFor({ timeout: 300_000 });
  await page.getByTestId('train').click();
  await page.getByTestId('phase').filter({ hasText: /^(finished|failed)$/ }).waitFor({ timeout: 3_600_000 });
  if (await page.getByTestId('error').count()) throw new Error(await page.getByTestId('error').textContent());
  // The page lists "step loss ms tokens" per step.
  const stepMs = (await page.getByTestId('losses').textContent())
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => {
      const [, , ms, tokens] = l.split(' ').map(Number);
      return { ms, tokens };
    });
  return {
    first_step_ms: Number(await page.getByTestId('first-step-ms').textContent()),
    model_from: await page.getByTestId('model-cached').textContent(),
    backend: await page.getByTestId('run-backend').textContent(),
    step_ms: stepMs,
    steps,
  };
}

const page = await ctx.newPage();
const small = '?steps=2&batch=8&len=64&eval=1000&evaln=8&save=1000';
// The wasm CPU backend first: its step is short, so these show the loading cost itself.
const cpuUncached = await run(page, small + '&cpu=true', 2);
const cpuCached = await run(page, small + '&cpu=true', 2);
const uncached = await run(page, small + '&gpu=true', 2);
const shape = (n, cpu) => `?data=spam&steps=${n}&batch=4&len=128&eval=1000&evaln=4&save=1000${cpu ? '&cpu=true' : '&gpu=true'}`;
const gpu = await run(page, shape(gpuSteps, false), gpuSteps);
// The page is cross-origin isolated, so `cpu` is the threaded worker (one Web Worker per
// core); `cpu1` is the plain single-threaded worker (`threads=1`).
const cpu = await run(page, shape(cpuSteps, true), cpuSteps);
const cpu1 = await run(page, shape(cpuSteps, true) + '&threads=1', cpuSteps);
await ctx.close();
rmSync(profile, { recursive: true, force: true });

// The step-time runs' batch is 4 rows of at most 128 tokens, padded to the longest row.
const FULL_TOKENS = 4 * 128;
const summary = (r) => {
  // The first step compiles pipelines and warms caches: excluded.
  const timed = r.step_ms.slice(1);
  // Steps whose every row has 128 real tokens: exactly the native benchmark's 4 × 128 step.
  const full = timed.filter((s) => s.tokens === FULL_TOKENS);
  return {
    backend: r.backend,
    steps: r.step_ms.length,
    median_ms: median(timed.map((s) => s.ms)),
    tokens_per_step: median(timed.map((s) => s.tokens)),
    full_steps: full.length,
    full_median_ms: median(full.map((s) => s.ms)),
  };
};
console.log(JSON.stringify({
  first_step: [cpuUncached, cpuCached, uncached].map((r) => ({ ms: r.first_step_ms, model_from: r.model_from, backend: r.backend })),
  webgpu: summary(gpu),
  cpu: summary(cpu),
  cpu1: summary(cpu1),
}));
