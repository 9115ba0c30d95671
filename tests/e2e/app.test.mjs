// Browser end-to-end test of the served app: Playwright drives Debian's Chromium with WebGPU
// (SwiftShader when there is no GPU). Run by `cargo xtask test --e2e`, which builds the app,
// serves it and sets TUNELAB_URL.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const url = process.env.TUNELAB_URL;
const out = process.env.TUNELAB_E2E_OUTPUT ?? join(tmpdir(), 'tunelab-e2e');
mkdirSync(out, { recursive: true });

let browser;
let context;

before(async () => {
  assert.ok(url, 'TUNELAB_URL must point at the served app (cargo xtask test --e2e sets it)');
  context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'tunelab-chromium-')), {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--enable-unsafe-webgpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
  browser = context;
});

after(async () => {
  await browser?.close();
});

test('the app shell renders and shows the WebGPU adapter and its limits', async () => {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(url);
  await page.getByRole('heading', { name: 'Tunelab' }).waitFor();

  const status = page.getByTestId('gpu-status');
  await status.filter({ hasText: /WebGPU (ready|is not available)/ }).waitFor({ timeout: 120_000 });
  await page.screenshot({ path: join(out, 'app-shell.png'), fullPage: true });
  assert.equal(await status.textContent(), 'WebGPU ready');

  const vendor = await page.getByTestId('adapter-vendor').textContent();
  const architecture = await page.getByTestId('adapter-architecture').textContent();
  const backend = await page.getByTestId('adapter-backend').textContent();
  console.log(`# adapter: vendor=${vendor} architecture=${architecture} backend=${backend}`);
  assert.equal(backend, 'BrowserWebGpu');
  assert.ok(vendor.length > 0, 'the adapter vendor is shown');
  if (!process.env.TUNELAB_E2E_REAL_GPU) {
    // Without a GPU, Chromium's WebGPU adapter is SwiftShader.
    assert.equal(architecture, 'swiftshader');
  }

  const binding = await page.getByTestId('limit-max-storage-buffer-binding-size').textContent();
  const mib = Number.parseInt(binding, 10);
  // The app asks for the adapter's real limits: more than WebGPU's 128 MiB default here.
  assert.ok(mib >= 128, `max storage binding ${binding}`);
  const perDim = Number.parseInt(await page.getByTestId('limit-max-compute-workgroups-per-dimension').textContent(), 10);
  assert.ok(perDim >= 65535, `workgroups per dimension ${perDim}`);
  assert.deepEqual(errors, []);
  await page.close();
});

test('the default model and the sample datasets are served with the app', async () => {
  const page = await context.newPage();
  await page.goto(url);
  await page.getByTestId('model').first().waitFor({ timeout: 60_000 });
  const models = await page.getByTestId('model').allTextContents();
  assert.ok(models.some((m) => m.includes('all-MiniLM-L6-v2') && m.includes('22.7M parameters')), models.join('\n'));
  const datasets = await page.getByTestId('dataset').allTextContents();
  assert.equal(datasets.length, 5, datasets.join('\n'));
  for (const name of ['Sentiment', 'Topic', 'Spam', 'NER', 'Text']) {
    assert.ok(datasets.some((d) => d.startsWith(name)), `${name} in ${datasets.join(' | ')}`);
  }
  // The weights themselves are reachable by the app.
  const head = await page.evaluate(async () => {
    const r = await fetch('assets/models/all-MiniLM-L6-v2/config.json');
    return { ok: r.ok, config: await r.json() };
  });
  assert.ok(head.ok);
  assert.equal(head.config.hidden_size, 384);
  await page.close();
});
