// What every browser flow shares: Debian's Chromium through playwright-core,
// a screenshot per step, and waits on conditions with a deadline (never a fixed sleep).
// The Rust e2e test (tests/e2e/tests/e2e/page.rs) boots the stack and runs a flow
// with BASE_URL, TOKEN, TENANT and SCREENSHOTS in the environment.

import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: the Rust e2e test passes it (see tests/e2e/tests/e2e/page.rs)`);
  return value;
};

/** Generous: the e2e stack shares two cores with other tests. */
export const STEP_TIMEOUT_MS = 90_000;

/** Runs `flow(page, shot)` in a fresh headless Chromium; exits non-zero on any failure. */
export async function run(name, flow) {
  const screenshots = join(env('SCREENSHOTS'), name);
  // A run's screenshots only: none left from an earlier run of the flow.
  rmSync(screenshots, { recursive: true, force: true });
  mkdirSync(screenshots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // Root in a container has no user namespace for Chromium's sandbox.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 }, locale: 'en-GB' });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const problems = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !/status of 4\d\d/.test(message.text())) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  let step = 0;
  const shot = async (label) => {
    step += 1;
    const file = join(screenshots, `${String(step).padStart(2, '0')}-${label}.png`);
    await page.screenshot({ path: file, fullPage: true });
    console.log(`screenshot ${file}`);
  };
  try {
    await flow(page, shot, context);
    if (problems.length) throw new Error(`the page reported errors:\n${problems.join('\n')}`);
    console.log(`${name}: passed`);
  } catch (err) {
    await page.screenshot({ path: join(screenshots, 'failure.png'), fullPage: true }).catch(() => {});
    console.error(`${name}: FAILED at step ${step + 1}: ${err.stack || err}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

/** Polls `check` until it returns a truthy value or the deadline passes. */
export async function until(what, check, timeoutMs = STEP_TIMEOUT_MS, everyMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** Waits until `locator`'s text matches `pattern`. */
export async function textMatches(locator, pattern, timeoutMs = STEP_TIMEOUT_MS) {
  return until(`${locator} to read ${pattern}`, async () => pattern.test((await locator.textContent()) || ''), timeoutMs);
}

export function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

/** A JSON file the Rust side reads after the flow (what the page showed). */
export function report(values) {
  if (process.env.RESULT_FILE) writeFileSync(process.env.RESULT_FILE, JSON.stringify(values));
}

/** The page's address with the token in the fragment, as the portal would link it. */
export function pageUrl(extra = '') {
  return `${env('BASE_URL')}/#token=${encodeURIComponent(env('TOKEN'))}&tenant=${encodeURIComponent(env('TENANT'))}${extra}`;
}
