// Keyboard only: from the top of the page, Tab to a setting, change it, Tab to
// Save and press Enter; the saved template has it (the Rust side reads it back).
// A mail address the server refuses is shown beside its field (the 422).
// Then a second writer changes the template behind the page's back: the page's
// next save is refused as stale (412) and offers to reload.
//
// Env: BASE_URL TOKEN TENANT SCREENSHOTS PROVIDER_SETTINGS

import { assert, env, pageUrl, run, textMatches } from './lib.mjs';

/** Presses Tab until `predicate(active element)` holds; fails after `limit` presses. */
async function tabTo(page, what, predicate, limit = 60) {
  for (let i = 0; i < limit; i++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate(predicate)) return;
  }
  throw new Error(`Tab never reached ${what}`);
}

await run('keyboard-save', async (page, shot) => {
  await page.goto(pageUrl());
  await page.getByRole('heading', { name: /Acme AB/ }).waitFor();
  await page.locator('body').focus();

  await tabTo(page, 'the error notification email', () => document.activeElement?.id === 'f-error-email');
  await page.keyboard.press('Control+A');
  await page.keyboard.type('helpdesk@acme.example');
  await tabTo(page, 'the level', () => document.activeElement?.id === 'f-error-level');
  // Visible focus: the focused control has an outline.
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert(outline !== 'none', `the focused control shows focus (outline ${outline})`);
  await tabTo(page, 'Save', () => document.activeElement?.matches('#general-title ~ .form-actions button.save'));
  await shot('keyboard-focus-on-save');
  await page.keyboard.press('Enter');
  await textMatches(page.locator('#general-title ~ .form-actions .save-state'), /Saved/);
  await shot('keyboard-saved');

  // The server's 422 is shown beside the field it names, and nothing is saved.
  const copyTo = page.getByLabel('Also send a separate welcome mail to');
  const savedCopyTo = await copyTo.inputValue();
  await copyTo.focus();
  await page.keyboard.press('Control+A');
  await page.keyboard.type('pbx-admin at acme');
  await page.keyboard.press('Enter');
  const besideCopyTo = page.locator('[data-error-for="welcome_mail_copy_to"]');
  await textMatches(besideCopyTo, /.+/);
  assert((await copyTo.getAttribute('aria-invalid')) === 'true', 'the refused field is marked invalid');
  await textMatches(page.locator('#general-title ~ .form-actions .save-state'), /Not saved/);
  await shot('server-refusal-beside-field');
  await copyTo.focus();
  await page.keyboard.press('Control+A');
  await page.keyboard.type(savedCopyTo);

  // A second writer (another admin) saves in between: this page's version is stale.
  const api = `${env('BASE_URL')}/v1/tenants/${encodeURIComponent(env('TENANT'))}`;
  const headers = { Authorization: `Bearer ${env('TOKEN')}`, 'Content-Type': 'application/json' };
  const read = await fetch(api, { headers });
  const current = await read.json();
  const other = await fetch(api, {
    method: 'PUT',
    headers: { ...headers, 'If-Match': read.headers.get('ETag') },
    // The read masks the secret; this writer knows it, as the admin who pasted it does.
    body: JSON.stringify({ ...current, name: 'Acme Group AB', provider_settings: env('PROVIDER_SETTINGS') }),
  });
  assert(other.ok, `the second writer's save (HTTP ${other.status})`);

  const days = page.getByLabel('Delete user after (days)');
  const savedDays = await days.inputValue();
  await days.focus();
  await page.keyboard.press('Control+A');
  await page.keyboard.type('14');
  await page.keyboard.press('Enter'); // Enter in a text field submits the form
  await textMatches(page.locator('#general-errors'), /Someone else changed this template/);
  const reload = page.getByRole('button', { name: 'Reload the saved settings' });
  assert(await reload.evaluate((button) => button === document.activeElement), 'focus moves to the reload button');
  await shot('stale-refused');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: /Acme Group AB/ }).waitFor();
  assert((await days.inputValue()) === savedDays, `the reload shows the saved value ${savedDays}`);
});
