// Browser end-to-end tests of the served app: Playwright drives Debian's Chromium with WebGPU
// (SwiftShader when there is no GPU). Run by `cargo xtask test --e2e`, which builds the app,
// serves it and sets TUNELAB_URL. Shapes are small: SwiftShader takes seconds per step.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { readZip, safetensorsKeys } from './zip.mjs';

const url = process.env.TUNELAB_URL;
const out = process.env.TUNELAB_E2E_OUTPUT ?? join(tmpdir(), 'tunelab-e2e');
mkdirSync(out, { recursive: true });

const BASE_ARGS = [
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

/** A browser with its own profile (its own OPFS); `webgpu: false` leaves WebGPU off. Closing
 * it removes the profile (the model stored in OPFS is 90 MB). */
async function launch({ webgpu = true } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'tunelab-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    acceptDownloads: true,
    args: webgpu ? [...BASE_ARGS, '--enable-unsafe-webgpu'] : BASE_ARGS,
  });
  const close = ctx.close.bind(ctx);
  ctx.close = async () => {
    await close();
    rmSync(profile, { recursive: true, force: true });
  };
  return ctx;
}

let context;

before(async () => {
  assert.ok(url, 'TUNELAB_URL must point at the served app (cargo xtask test --e2e sets it)');
  context = await launch();
});

after(async () => {
  await context?.close();
});

/** Opens the app with a query string and waits for the worker to be ready. */
async function open(ctx, query = '') {
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // The dev server sends a Content-Security-Policy: anything it blocks is an error.
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) errors.push(m.text());
  });
  // The page itself says when it is ready; the load event can lag on a busy 2-core machine.
  // A navigation that never reaches the document is tried once more (the wasm-fallback test's
  // first one stalled for 120 s in 2 of 7 runs; cause not yet known); a page that does not
  // load fails both tries.
  try {
    await page.goto(url + query, { waitUntil: 'domcontentloaded', timeout: 120_000 });
  } catch (e) {
    if (e.name !== 'TimeoutError') throw e;
    console.warn(`navigation to ${query || '/'} timed out; trying once more`);
    await page.goto(url + query, { waitUntil: 'domcontentloaded', timeout: 120_000 });
  }
  await page.getByTestId('status').filter({ hasText: 'Ready.' }).waitFor({ timeout: 120_000 });
  await page.getByTestId('data-summary').waitFor({ timeout: 60_000 });
  return { page, errors };
}

async function waitPhase(page, phases, timeout = 600_000) {
  const re = new RegExp(`^(${phases.join('|')})$`);
  await page.getByTestId('phase').filter({ hasText: re }).waitFor({ timeout });
}

async function losses(page) {
  const text = await page.getByTestId('losses').textContent();
  return text
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => {
      const [step, loss] = l.split(' ');
      return [Number(step), Number(loss)];
    });
}

/** Wall time of each reported step, in ms. */
async function stepMs(page) {
  const text = await page.getByTestId('losses').textContent();
  return text.split('\n').filter((l) => l.trim()).map((l) => Number(l.split(' ')[2]));
}

/** Waits until the page has reported at least `n` steps (steps can be faster than polling). */
async function waitSteps(page, n, timeout = 300_000) {
  await page.waitForFunction(
    (k) => document.querySelector('[data-testid=losses]').textContent.trim().split('\n').filter((l) => l).length >= k,
    n,
    { timeout },
  );
}

/** Saves a screenshot for the test report. It is a record, not a check: a capture that does
 * not come within 60 s (Chromium waits for a compositor frame; in one CI run the device-loss
 * test's capture waited past 30 s and failed the test) is logged and the test goes on. */
async function shot(page, name) {
  try {
    await page.screenshot({ path: join(out, name), fullPage: true, timeout: 60_000 });
  } catch (e) {
    if (e.name !== 'TimeoutError') throw e;
    console.warn(`# screenshot ${name} timed out; the test goes on`);
  }
}

async function noError(page) {
  if (await page.getByTestId('error').count()) {
    assert.fail(`the page shows an error: ${await page.getByTestId('error').textContent()}`);
  }
}

test('the app shell renders and shows the WebGPU adapter and its limits', async () => {
  const { page, errors } = await open(context);
  const status = page.getByTestId('gpu-status');
  await shot(page, 'app-shell.png');
  assert.equal(await status.textContent(), 'WebGPU ready');

  const vendor = await page.getByTestId('adapter-vendor').textContent();
  const architecture = await page.getByTestId('adapter-architecture').textContent();
  const backend = await page.getByTestId('adapter-backend').textContent();
  console.log(`# adapter: vendor=${vendor} architecture=${architecture} backend=${backend}`);
  assert.equal(backend, 'BrowserWebGpu');
  assert.ok(vendor.length > 0, 'the adapter vendor is shown');
  if (!process.env.TUNELAB_E2E_REAL_GPU) {
    // Without a GPU, Chromium's WebGPU adapter is SwiftShader, and training defaults to the
    // (much faster) wasm CPU backend, saying why.
    assert.equal(architecture, 'swiftshader');
    assert.match(await page.getByTestId('gpu-note').textContent(), /software renderer, slower than the CPU backend/);
  }
  const binding = await page.getByTestId('limit-max-storage-buffer-binding-size').textContent();
  // The worker asks for the adapter's real limits: more than WebGPU's 128 MiB default here.
  assert.ok(Number.parseInt(binding, 10) >= 128, `max storage binding ${binding}`);
  const perDim = Number.parseInt(await page.getByTestId('limit-max-compute-workgroups-per-dimension').textContent(), 10);
  assert.ok(perDim >= 65535, `workgroups per dimension ${perDim}`);
  assert.deepEqual(errors, []);
  await page.close();
});

test('the default model and the sample datasets are served with the app', async () => {
  const { page } = await open(context);
  const models = await page.getByTestId('model').allTextContents();
  assert.ok(models.some((m) => m.includes('all-MiniLM-L6-v2') && m.includes('22.7M parameters')), models.join('\n'));
  assert.match(await page.getByTestId('model-facts').textContent(), /bert, 6 layers, hidden 384, 12 heads/);
  const datasets = await page.getByTestId('dataset').allTextContents();
  assert.equal(datasets.length, 5, datasets.join('\n'));
  for (const name of ['Sentiment', 'Topic', 'Spam', 'NER', 'Text']) {
    assert.ok(datasets.some((d) => d.startsWith(name)), `${name} in ${datasets.join(' | ')}`);
  }
  // The sample's preview: rows, label counts, and the split.
  assert.ok((await page.getByTestId('preview').locator('tbody tr').count()) > 3);
  assert.match(await page.getByTestId('label-counts').textContent(), /negative: \d+ · positive: \d+/);
  assert.match(await page.getByTestId('data-summary').textContent(), /2400 training and 300 validation/);
  // Trainable parameters follow the options live.
  const lora = await page.getByTestId('param-counts').textContent();
  await page.getByTestId('method-bitfit').check();
  const bitfit = await page.getByTestId('param-counts').textContent();
  await page.getByTestId('method-full').check();
  const full = await page.getByTestId('param-counts').textContent();
  assert.match(lora, /Trainable parameters: 74\.5k of 22\.79M/);
  assert.notEqual(bitfit, lora);
  assert.match(full, /\(100\.00%\)/);
  // The configuration is in the URL, so the link reproduces it.
  assert.match(page.url(), /method=full/);
  // A value typed wrong is shown as an error under its field; the form keeps its last good
  // value (and the URL says so), the typed text stays, and a good value clears the error.
  await page.getByTestId('steps').fill('lots');
  await page.getByTestId('steps').press('Tab');
  assert.match(await page.getByTestId('steps-error').textContent(), /steps `lots`: expected a whole number of at least 1/);
  assert.equal(await page.getByTestId('steps').inputValue(), 'lots');
  assert.doesNotMatch(page.url(), /steps=/);
  await page.getByTestId('steps').fill('25');
  await page.getByTestId('steps').press('Tab');
  assert.equal(await page.getByTestId('steps-error').count(), 0);
  for (let i = 0; i < 50 && !/steps=25/.test(page.url()); i++) await page.waitForTimeout(100);
  assert.match(page.url(), /steps=25/);
  await page.close();
});

test('main path: LoRA on WebGPU trains, charts, evaluates, predicts, exports and imports', async () => {
  // NER on the small WNUT sample: its loss falls clearly within a few steps.
  const { page, errors } = await open(context, '?data=ner&steps=4&batch=4&len=32&eval=4&evaln=16&save=2&lr=0.005&gpu=true');
  assert.match(await page.getByTestId('task').textContent(), /NER/);
  assert.equal(await page.getByTestId('method-lora').isChecked(), true);
  await page.getByTestId('train').click();
  // The loss chart gets its first points while training.
  await page.getByTestId('loss-chart').locator('path.series.a').waitFor({ timeout: 300_000 });
  await waitPhase(page, ['finished', 'failed']);
  await noError(page);
  await shot(page, 'main-trained.png');
  assert.match(await page.getByTestId('run-backend').textContent(), /^WebGPU/);
  const l = await losses(page);
  console.log(`# WebGPU LoRA NER losses: ${l.map((x) => x[1].toFixed(4)).join(' ')}`);
  assert.equal(l.length, 4);
  assert.ok(l.every(([, v]) => Number.isFinite(v)));
  // The loss falls: the last two steps clearly below the first.
  assert.ok((l[2][1] + l[3][1]) / 2 < l[0][1] - 0.1, `losses ${JSON.stringify(l)}`);
  // Evaluation: entity F1 overall and per type.
  const f1 = Number(await page.getByTestId('metric-f1').textContent());
  assert.ok(f1 >= 0 && f1 <= 1);
  assert.ok(Number(await page.getByTestId('metric-loss').textContent()) > 0);
  assert.ok((await page.getByTestId('metric-chart').locator('circle').count()) >= 1);
  assert.ok((await page.getByTestId('speed').textContent()).includes('tokens/s'));

  // The playground tags each word.
  await page.getByTestId('playground-text').fill('Barack Obama visited Paris with Google engineers');
  await page.getByTestId('predict').click();
  await page.getByTestId('prediction').waitFor({ timeout: 120_000 });
  const before = await page.getByTestId('prediction').textContent();
  for (const w of ['Barack', 'Obama', 'Paris', 'Google']) assert.ok(before.includes(w), before);

  // Export: a zip in PEFT's format.
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export').click()]);
  const zipPath = join(out, download.suggestedFilename());
  await download.saveAs(zipPath);
  const files = readZip(readFileSync(zipPath));
  const names = Object.keys(files).sort();
  assert.deepEqual(names, ['adapter_config.json', 'adapter_model.safetensors', 'tunelab_export.json']);
  const cfg = JSON.parse(files['adapter_config.json'].toString('utf8'));
  assert.equal(cfg.peft_type, 'LORA');
  assert.equal(cfg.r, 8);
  assert.deepEqual([...cfg.target_modules].sort(), ['query', 'value']);
  assert.equal(cfg.task_type, 'TOKEN_CLS');
  const keys = safetensorsKeys(files['adapter_model.safetensors']);
  assert.ok(keys.includes('base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight'), keys.join('\n'));
  assert.ok(keys.includes('base_model.model.bert.encoder.layer.5.attention.self.value.lora_B.weight'), keys.join('\n'));
  assert.ok(keys.every((k) => k.startsWith('base_model.model.')), keys.join('\n'));
  assert.equal(keys.filter((k) => k.includes('lora_A')).length, 12);

  // Import the download again: the playground gives the same tags.
  await page.getByTestId('import-file').setInputFiles(zipPath);
  await page.getByTestId('imported').waitFor({ timeout: 120_000 });
  assert.match(await page.getByTestId('imported').textContent(), /lora adapter for NER/);
  assert.equal(await page.getByTestId('prediction').count(), 0, 'the old prediction is cleared');
  await page.getByTestId('predict').click();
  await page.getByTestId('prediction').waitFor({ timeout: 120_000 });
  assert.equal(await page.getByTestId('prediction').textContent(), before);
  await noError(page);
  assert.deepEqual(errors, []);
  await page.close();
});

test('reloading mid-run offers to resume, and the run continues exactly', async () => {
  // The wasm CPU backend is deterministic and fast; two runs of 30 steps.
  const query = '?steps=30&batch=4&len=32&eval=100&evaln=8&save=3&cpu=true';
  const { page } = await open(context, query);
  const pastBefore = await page.getByTestId('past-runs').locator('tbody tr').count();
  await page.getByTestId('train').click();
  await waitPhase(page, ['finished', 'failed'], 300_000);
  await noError(page);
  const reference = await losses(page);
  assert.equal(reference.length, 30);

  // Again, reloading the page after a checkpoint.
  await page.getByTestId('train').click();
  // Reload right after the first checkpoint, well before the end.
  await page.waitForFunction(() => /step \d+/.test(document.querySelector('[data-testid=checkpoint]').textContent), null, { timeout: 300_000 });
  await page.reload({ waitUntil: 'domcontentloaded', timeout: 120_000 });
  const banner = page.getByTestId('resume-banner');
  await banner.waitFor({ timeout: 120_000 });
  const at = Number((await banner.textContent()).match(/was interrupted; its last checkpoint, at step (\d+) of 30/)?.[1]);
  assert.ok(at > 0 && at < 30 && at % 3 === 0, `checkpoint step ${at}`);
  await shot(page, 'resume-offer.png');
  await page.getByTestId('resume').click();
  await waitPhase(page, ['finished', 'failed'], 300_000);
  await noError(page);
  const resumedAt = Number(await page.getByTestId('resumed-at').textContent());
  assert.equal(resumedAt, at);
  const resumed = await losses(page);
  assert.deepEqual(resumed, reference, 'the resumed run repeats the uninterrupted losses');
  // Classification's evaluation: accuracy, F1 per class and the confusion matrix.
  const acc = Number(await page.getByTestId('metric-accuracy').textContent());
  assert.ok(acc >= 0 && acc <= 1);
  assert.equal(await page.getByTestId('per-class').locator('tbody tr').count(), 2);
  assert.equal(await page.getByTestId('confusion').locator('tbody tr').count(), 2);
  await page.getByTestId('playground-text').fill('An absolutely wonderful film, I loved it.');
  await page.getByTestId('predict').click();
  await page.getByTestId('prediction').waitFor({ timeout: 60_000 });
  assert.match(await page.getByTestId('prediction').textContent(), /^(positive|negative) \(\d+\.\d%\)$/);
  await shot(page, 'resumed.png');

  // Both runs are in the history.
  assert.equal(await page.getByTestId('past-runs').locator('tbody tr').count(), pastBefore + 2);
  // Tunelab keeps its files in its own folder of the origin's storage. "Delete my data"
  // removes that folder, nothing else of the origin's (another app's file and its own
  // `models` folder stay): nothing to resume afterwards.
  const before = await page.evaluate(async () => {
    const root = await navigator.storage.getDirectory();
    const f = await root.getFileHandle('other-app.txt', { create: true });
    const w = await f.createWritable();
    await w.write('not Tunelab\'s');
    await w.close();
    await root.getDirectoryHandle('models', { create: true });
    const names = [];
    for await (const k of root.keys()) names.push(k);
    return names.sort();
  });
  assert.deepEqual(before, ['models', 'other-app.txt', 'tunelab']);
  await page.getByTestId('delete-data').click();
  await page.getByTestId('notice').waitFor({ timeout: 30_000 });
  const left = await page.evaluate(async () => {
    const root = await navigator.storage.getDirectory();
    const names = [];
    for await (const k of root.keys()) names.push(k);
    const f = await (await root.getFileHandle('other-app.txt')).getFile();
    return { names: names.sort(), text: await f.text() };
  });
  assert.deepEqual(left, { names: ['models', 'other-app.txt'], text: 'not Tunelab\'s' });
  assert.equal(await page.getByTestId('past-runs').count(), 0);
  await page.close();
});

test('a lost WebGPU device offers to resume; the run goes on from its checkpoint on a new device', async () => {
  // The device is destroyed (as a browser does when it reclaims one) after a checkpoint.
  const query = '?data=ner&steps=6&batch=4&len=32&eval=100&evaln=8&save=2&lr=0.005&gpu=true';
  const { page, errors } = await open(context, query);
  await page.getByTestId('train').click();
  await waitPhase(page, ['finished', 'failed']);
  await noError(page);
  assert.match(await page.getByTestId('run-backend').textContent(), /^WebGPU/);
  const reference = await losses(page);
  assert.equal(reference.length, 6);

  await page.getByTestId('train').click();
  await page.waitForFunction(() => /step \d+/.test(document.querySelector('[data-testid=checkpoint]').textContent), null, { timeout: 300_000 });
  await page.evaluate(() => window.tunelabTest.loseDevice());
  const banner = page.getByTestId('resume-banner');
  await banner.waitFor({ timeout: 120_000 });
  assert.match(await banner.textContent(), /The GPU went away/);
  assert.match(await page.getByTestId('error').textContent(), /The WebGPU device was lost \(destroyed/);
  assert.equal(await page.getByTestId('phase').textContent(), 'failed');
  assert.equal(await page.getByTestId('resume-cpu').count(), 1, 'the CPU is offered too');
  const at = Number((await banner.textContent()).match(/its last checkpoint, at step (\d+) of 6/)?.[1]);
  assert.ok(at >= 2 && at < 6 && at % 2 === 0, `checkpoint step ${at}`);
  await shot(page, 'device-lost.png');

  // Resume on WebGPU: a new device, the checkpoint's weights and optimiser state.
  await page.getByTestId('resume').click();
  await waitPhase(page, ['finished', 'failed']);
  await noError(page);
  assert.match(await page.getByTestId('run-backend').textContent(), /^WebGPU/);
  assert.equal(Number(await page.getByTestId('resumed-at').textContent()), at);
  const resumed = await losses(page);
  assert.deepEqual(resumed.map((l) => l[0]), reference.map((l) => l[0]));
  // The steps up to the checkpoint are the history saved with it; the steps after it repeat
  // the uninterrupted run's (to float rounding: another device compiles its own pipelines).
  for (const [i, [step, loss]] of resumed.entries()) {
    const want = reference[i][1];
    if (step <= at) assert.equal(loss, want, `step ${step}`);
    else assert.ok(Math.abs(loss - want) <= 1e-4 * Math.max(1, Math.abs(want)), `step ${step}: ${loss} vs ${want}`);
  }
  assert.deepEqual(errors, []);
  await page.close();
});

test('IA3 from the form trains on WebGPU and exports a PEFT IA3 adapter', async () => {
  const { page, errors } = await open(context, '?data=ner&steps=4&batch=4&len=32&eval=4&evaln=16&lr=0.01&gpu=true');
  // The method's options come from its registry entry.
  await page.getByTestId('method-ia3').check();
  assert.equal(await page.getByTestId('ia3-targets').inputValue(), 'key,value,output.dense');
  assert.equal(await page.getByTestId('ia3-feedforward').inputValue(), 'output.dense');
  assert.equal(await page.getByTestId('lora-r').count(), 0, 'LoRA options are hidden');
  // MiniLM: keys and values (384 each) and both output.dense inputs (384, 1536) in 6 layers
  // (16,128 values) plus the head: about 0.1% of the model (LoRA r=8 on query and value: 0.36%).
  const counts = await page.getByTestId('param-counts').textContent();
  const pct = Number(/\(([0-9.]+)%\)/.exec(counts)?.[1]);
  assert.ok(pct > 0.05 && pct < 0.2, counts);
  await page.getByTestId('train').click();
  await waitPhase(page, ['finished', 'failed']);
  await noError(page);
  const l = await losses(page);
  console.log(`# WebGPU IA3 NER losses: ${l.map((x) => x[1].toFixed(4)).join(' ')}`);
  assert.equal(l.length, 4);
  assert.ok(l.every(([, v]) => Number.isFinite(v)));
  assert.ok((l[2][1] + l[3][1]) / 2 < l[0][1] - 0.05, `losses ${JSON.stringify(l)}`);
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export').click()]);
  const zipPath = join(out, download.suggestedFilename());
  await download.saveAs(zipPath);
  const files = readZip(readFileSync(zipPath));
  const cfg = JSON.parse(files['adapter_config.json'].toString('utf8'));
  assert.equal(cfg.peft_type, 'IA3');
  assert.deepEqual(cfg.feedforward_modules, ['output.dense']);
  const keys = safetensorsKeys(files['adapter_model.safetensors']);
  assert.equal(keys.filter((k) => k.endsWith('.ia3_l')).length, 6 * 4, keys.join('\n'));
  assert.ok(keys.includes('base_model.model.bert.encoder.layer.0.output.dense.ia3_l'), keys.join('\n'));
  assert.deepEqual(errors, []);
  await page.close();
});

test('what the preflight refuses cannot be started', async () => {
  // Masked-LM logits of 256 x 512 x 30522 floats (16 GB) exceed any WebGPU buffer limit.
  const { page, errors } = await open(context, '?data=brown-text&batch=256&len=512&gpu=true');
  const refused = page.getByTestId('preflight-refused');
  await refused.waitFor({ timeout: 60_000 });
  assert.match(await refused.textContent(), /Cannot train here: the masked-LM logits need .* but this GPU allows .* per buffer/);
  const train = page.getByTestId('train');
  assert.equal(await train.isDisabled(), true);
  assert.match(await train.getAttribute('title'), /cannot train here/);
  // A size that fits enables it again.
  await page.getByTestId('batch').fill('2');
  await page.getByTestId('batch').dispatchEvent('change');
  await page.getByTestId('preflight-ok').or(page.getByTestId('preflight-adjust')).first().waitFor({ timeout: 30_000 });
  assert.equal(await train.isDisabled(), false);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a malformed CSV shows its line number; skipping bad rows counts them', async () => {
  const { page } = await open(context);
  const csv = 'text,label\n"a lovely film",positive\n"a dreadful film"\n"fine, really",positive\n"awful",negative\n';
  await page.getByTestId('data-file').setInputFiles({ name: 'reviews.csv', mimeType: 'text/csv', buffer: Buffer.from(csv) });
  const err = page.getByTestId('data-error');
  await err.waitFor({ timeout: 30_000 });
  const text = await err.textContent();
  await shot(page, 'bad-csv.png');
  assert.match(text, /reviews\.csv:3:/, text);
  await page.getByTestId('skip-bad').check();
  await page.getByTestId('skipped').waitFor({ timeout: 30_000 });
  assert.match(await page.getByTestId('skipped').textContent(), /Skipped 1 bad row\(s\); the first: reviews\.csv:3:/);
  assert.match(await page.getByTestId('label-counts').textContent(), /negative: 1 · positive: 2/);
  await page.close();
});

test('without WebGPU the wasm CPU backend trains BitFit, pauses, resumes, stops and exports', async () => {
  const ctx = await launch({ webgpu: false });
  try {
    const { page } = await open(ctx, '?method=bitfit&steps=200&batch=4&len=32&eval=2&evaln=8');
    assert.match(await page.getByTestId('gpu-status').textContent(), /wasm CPU backend/);
    assert.match(await page.getByTestId('cpu-fallback').textContent(), /wasm CPU backend/);
    await page.getByTestId('train').click();
    // After the first evaluation: pause, try the model, continue, stop.
    await page.getByTestId('eval-step').waitFor({ timeout: 300_000 });
    await page.getByTestId('pause').click();
    await waitPhase(page, ['paused'], 60_000);
    const pausedAt = (await losses(page)).length;
    await page.getByTestId('predict').click();
    await page.getByTestId('prediction').waitFor({ timeout: 60_000 });
    assert.match(await page.getByTestId('prediction').textContent(), /^(positive|negative) /);
    await page.waitForTimeout(1000);
    assert.equal((await losses(page)).length, pausedAt, 'no steps while paused');
    await page.getByTestId('continue').click();
    await waitPhase(page, ['training'], 60_000);
    await waitSteps(page, pausedAt + 2, 120_000);
    await page.getByTestId('stop').click();
    await waitPhase(page, ['stopped'], 120_000);
    await noError(page);
    // The server makes the page cross-origin isolated, so the threaded worker trains, on
    // one Web Worker per core.
    assert.equal(await page.evaluate(() => self.crossOriginIsolated), true);
    const cores = await page.evaluate(() => Math.min(Math.max(navigator.hardwareConcurrency, 1), 16));
    assert.equal(await page.getByTestId('run-backend').textContent(), `wasm CPU, ${cores} thread${cores === 1 ? '' : 's'}`);
    const l = await losses(page);
    assert.ok(l.length > pausedAt && l.length < 200, `${l.length} steps`);
    assert.ok(l.every(([, v]) => Number.isFinite(v) && v > 0));
    // The history lists the stopped run.
    assert.match(await page.getByTestId('past-runs').textContent(), /stopped/);
    // BitFit exports the changed tensors under Hugging Face names.
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export').click()]);
    const zipPath = join(out, `cpu-${download.suggestedFilename()}`);
    await download.saveAs(zipPath);
    const files = readZip(readFileSync(zipPath));
    assert.deepEqual(Object.keys(files).sort(), ['bitfit.safetensors', 'tunelab_export.json']);
    const keys = safetensorsKeys(files['bitfit.safetensors']);
    assert.ok(keys.includes('bert.encoder.layer.0.attention.self.query.bias'), keys.join('\n'));
    assert.ok(keys.includes('classifier.weight'), keys.join('\n'));
    assert.ok(keys.every((k) => k.endsWith('.bias') || k.startsWith('classifier.')), keys.join('\n'));
    assert.equal(JSON.parse(files['tunelab_export.json'].toString('utf8')).method.method, 'bitfit');
    await shot(page, 'cpu-fallback.png');
    await page.close();
  } finally {
    await ctx.close();
  }
});

test('the threaded wasm CPU backend trains as one thread does', async () => {
  const ctx = await launch({ webgpu: false });
  try {
    const query = '?steps=6&batch=4&len=48&eval=100&evaln=8&save=100&cpu=true';
    const runs = {};
    for (const threads of ['', '&threads=1']) {
      const { page, errors } = await open(ctx, query + threads);
      await page.getByTestId('train').click();
      await waitPhase(page, ['finished', 'failed'], 300_000);
      await noError(page);
      assert.deepEqual(errors, []);
      runs[threads || 'pool'] = {
        backend: await page.getByTestId('run-backend').textContent(),
        losses: await losses(page),
        ms: await stepMs(page),
      };
      await page.close();
    }
    const { pool, '&threads=1': one } = runs;
    assert.equal(one.backend, 'wasm CPU, 1 thread');
    assert.match(pool.backend, /^wasm CPU, \d+ threads?$/);
    assert.equal(pool.losses.length, 6);
    // Every kernel sums in an order that does not depend on the thread count, but the threaded
    // build's matmul fuses each multiply-add (relaxed SIMD), rounding once where the plain
    // build rounds twice: the runs agree to float rounding, not to the bit. Rows computed on
    // the wrong thread or a missed block would move a loss by far more.
    assert.equal(one.losses.length, 6);
    pool.losses.forEach(([step, loss], i) => {
      const [oneStep, oneLoss] = one.losses[i];
      assert.equal(step, oneStep);
      assert.ok(Math.abs(loss - oneLoss) <= 1e-4 * Math.max(1, Math.abs(oneLoss)),
        `step ${step}: loss ${loss} threaded vs ${oneLoss} on one thread`);
    });
    console.log(`step ms, ${pool.backend}: ${pool.ms.join(', ')}; 1 thread: ${one.ms.join(', ')}`);
  } finally {
    await ctx.close();
  }
});

test('your own Hugging Face model files can be picked, checked and stored', async () => {
  const { page } = await open(context);
  const dir = join(process.env.TUNELAB_ASSETS ?? join(import.meta.dirname, '../../assets'), 'models/all-MiniLM-L6-v2');
  // A wrong set of files is refused with what is missing.
  await page.getByTestId('model-files').setInputFiles([join(dir, 'config.json')]);
  await page.getByTestId('error').filter({ hasText: /needs config\.json, model\.safetensors and tokenizer\.json/ }).waitFor({ timeout: 30_000 });
  await page.getByTestId('model-files').setInputFiles(['config.json', 'model.safetensors', 'tokenizer.json'].map((f) => join(dir, f)));
  await page.getByTestId('model-name').filter({ hasText: 'my-model (your files)' }).waitFor({ timeout: 120_000 });
  assert.match(await page.getByTestId('model-facts').textContent(), /bert, 6 layers, hidden 384, 12 heads/);
  assert.equal(await page.getByTestId('model-params').textContent(), '22.71M');
  const stored = await page.evaluate(async () => {
    const root = await navigator.storage.getDirectory();
    const ours = await root.getDirectoryHandle('tunelab');
    const dir = await (await ours.getDirectoryHandle('models')).getDirectoryHandle('my-model');
    const names = [];
    for await (const k of dir.keys()) names.push(k);
    return names.sort();
  });
  assert.deepEqual(stored, ['config.json', 'model.safetensors', 'tokenizer.json']);
  await page.close();
});
