// Drives the image gateway's upload page in headless Chromium (Debian's
// /usr/bin/chromium through playwright-core), as a user would: choose a PNG,
// Analyze, wait for the predictions, check them, take a screenshot; then the
// same with a file that is not an image, and check the error message shown.
//
// Environment: PLAYWRIGHT_DIR (where playwright-core is installed), PAGE_URL,
// PNG_PATH, BAD_PATH, EXPECTED (JSON list of {label, confidence}),
// EXPECTED_ERROR, SHOT_DIR. Prints a JSON summary; exits non-zero on failure.
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(path.join(process.env.PLAYWRIGHT_DIR, 'package.json'));
const { chromium } = require('playwright-core');

const expected = JSON.parse(process.env.EXPECTED);
const shots = process.env.SHOT_DIR;

function check(cond, msg) {
  if (!cond) throw new Error('assertion failed: ' + msg);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
const summary = {};
try {
  const page = await browser.newPage({ viewport: { width: 800, height: 900 } });
  const consoleErrors = [];
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  await page.goto(process.env.PAGE_URL, { waitUntil: 'load' });
  check(await page.title() === 'Image Analyzer', 'page title');
  check(await page.isDisabled('#analyze'), 'Analyze is disabled before a file is chosen');

  // --- a real PNG -> predictions
  await page.setInputFiles('#file', process.env.PNG_PATH);
  check(!(await page.isDisabled('#analyze')), 'Analyze enabled once a file is chosen');
  check((await page.textContent('#file-name')).trim() === path.basename(process.env.PNG_PATH),
        'file name shown');
  await page.click('#analyze');
  await page.waitForSelector('#predictions li.prediction', { timeout: 20000 });
  await page.waitForFunction(() => document.getElementById('spinner').hidden, null, { timeout: 20000 });
  const rows = await page.$$eval('#predictions li.prediction', (lis) => lis.map((li) => ({
    label: li.querySelector('.pred-label').textContent,
    confidence: li.querySelector('.pred-confidence').textContent,
  })));
  check(rows.length === expected.length, `${expected.length} predictions rendered, got ${rows.length}`);
  expected.forEach((p, i) => {
    const label = p.label.replace(/_/g, ' ');
    const conf = `Confidence: ${(p.confidence * 100).toFixed(2)}%`;
    check(rows[i].label === label, `row ${i} label ${JSON.stringify(rows[i].label)} == ${JSON.stringify(label)}`);
    check(rows[i].confidence === conf, `row ${i} ${JSON.stringify(rows[i].confidence)} == ${JSON.stringify(conf)}`);
  });
  check(await page.isHidden('#error'), 'no error shown');
  check(await page.isVisible('#preview'), 'preview shown');
  summary.rows = rows;
  summary.success_shot = path.join(shots, 'predictions.png');
  await page.screenshot({ path: summary.success_shot, fullPage: true });

  // --- a file that is not an image -> the gateway's message
  await page.setInputFiles('#file', process.env.BAD_PATH);
  check(await page.isHidden('#results'), 'old results cleared');
  await page.click('#analyze');
  await page.waitForSelector('#error:not([hidden])', { timeout: 20000 });
  const err = (await page.textContent('#error')).trim();
  check(err === process.env.EXPECTED_ERROR, `error ${JSON.stringify(err)}`);
  check(await page.isHidden('#results'), 'no results with an error');
  summary.error = err;
  summary.error_shot = path.join(shots, 'error.png');
  await page.screenshot({ path: summary.error_shot, fullPage: true });

  check(consoleErrors.length === 0, 'no page errors: ' + consoleErrors.join('; '));
  summary.ok = true;
  console.log(JSON.stringify(summary));
} finally {
  await browser.close();
}
