// The portal documentation's whole flow from an empty company: create the AD Sync
// template, paste a broken Provider Settings string (warning, Save disabled), fix it,
// save, re-synchronise, see the green time, pick caller id, template and the four
// fields from the lists, preview, save, re-synchronise. Then Swedish. The Rust side
// checks the users in the PBX simulator against what the preview promised.
//
// Env: BASE_URL TOKEN TENANT SCREENSHOTS PROVIDER_SETTINGS PBX_COMPANY CALLER_ID
//      TEMPLATE_ID RESULT_FILE

import { assert, env, pageUrl, report, run, textMatches } from './lib.mjs';

const providerSettings = env('PROVIDER_SETTINGS');

await run('seed-flow', async (page, shot) => {
  await page.goto(pageUrl());
  // The token is taken from the fragment and removed from the address bar.
  await page.getByRole('heading', { name: /Create new template/ }).waitFor();
  assert(!page.url().includes('token='), `the token stays out of the address: ${page.url()}`);
  await page.getByText('This company has no AD Sync template yet').waitFor();
  await shot('empty-company');

  // General settings, as in the documentation's steps 1-7.
  await page.getByLabel('Company name').fill('Acme AB');
  await page.getByLabel('Company id in the PBX').fill(env('PBX_COMPANY'));
  assert((await page.getByLabel('Type', { exact: true }).inputValue()) === 'ad_sync', 'type is AD sync');
  await page.getByRole('radio', { name: /User sync/ }).check();
  await page.getByLabel('Send welcome mail to new users').check();
  await page.getByLabel('Also send a separate welcome mail to').fill('pbx-admin@acme.example');
  await page.getByLabel('Delete user after (days)').fill('7');
  await page.getByLabel('Error notification email').fill('it@acme.example');
  await page.getByLabel('Error notification level').selectOption('warning');

  // A broken string: a trailing space inside client_secret and a missing closing brace.
  const provider = page.getByLabel('Provider Settings');
  const broken = providerSettings.replace(/"client_secret":"([^"]*)"/, '"client_secret":"$1 "').slice(0, -1);
  await provider.fill(broken);
  const check = page.locator('#provider-check');
  await textMatches(check, /not valid JSON/);
  const save = page.locator('#general-title ~ .form-actions button.save');
  assert(await save.isDisabled(), 'Save is disabled while the JSON is malformed');
  await shot('broken-provider-settings');

  // Closing the brace leaves the spaces: the warning names the key.
  await provider.fill(`${broken}}`);
  await textMatches(check, /provider_settings\.client_secret.*leading or trailing spaces/);
  assert(await save.isDisabled(), 'Save stays disabled while a value has spaces');
  // A misspelt key is named with the key it resembles.
  await provider.fill(providerSettings.replace('"client_id"', '"clientid"'));
  await textMatches(check, /clientid.*did you mean .client_id./);
  await shot('misspelt-key');

  await provider.fill(providerSettings);
  await textMatches(check, /look right/);
  assert(await save.isEnabled(), 'Save is enabled once the JSON is right');
  await save.click();
  await page.getByRole('heading', { name: /Acme AB/ }).waitFor();
  await textMatches(page.locator('#general-title ~ .form-actions .save-state'), /Saved/);
  await page.getByText('appear after the first successful synchronisation').waitFor();
  await shot('template-saved');

  // The first re-synchronise reads the directory; nobody is created yet (no mapping).
  await page.getByRole('button', { name: 'Re-synchronise' }).click();
  await page.locator('#run-progress').waitFor();
  await shot('first-sync-running');
  const success = page.locator('#last-success.success');
  await textMatches(success, /Last successful synchronisation: .+/);
  const firstSuccess = await success.textContent();
  await shot('first-sync-green');

  // The choices appear: caller id and template from the PBX, fields from the directory.
  await page.getByLabel('Default caller id').selectOption(env('CALLER_ID'));
  await page.getByLabel('Default user settings template').selectOption(env('TEMPLATE_ID'));
  const mapping = { Alias: 'mailNickname', 'First name': 'givenName', Surname: 'surname', 'PSTN fixed': 'businessPhones[0]' };
  for (const [label, source] of Object.entries(mapping)) {
    const select = page.getByLabel(new RegExp(`^${label} \\(required\\)`));
    await select.selectOption(source);
    const example = page.locator(`#${await select.getAttribute('id')}-example`);
    await textMatches(example, /^Example: .+/);
  }
  await page.getByText('Alias, First name, Surname and PSTN fixed are required').waitFor();
  // One further field: the mail address.
  await page.getByRole('button', { name: 'Add field' }).click();
  await page.getByLabel('Entra ID field').selectOption('mail');
  await shot('mapping-chosen');

  // Preview before saving: what the next sync would do, nothing written.
  await page.getByRole('button', { name: 'Preview' }).click();
  const summary = page.locator('#preview-result .summary');
  await textMatches(summary, /\d+ to create/);
  const toCreate = Number(/(\d+) to create/.exec(await summary.textContent())[1]);
  assert(toCreate > 0, `the preview creates users (${await summary.textContent()})`);
  const createRows = await page.locator('#preview-result tbody .badge.create').count();
  assert(createRows === toCreate, `the preview lists every user it creates (${createRows} rows, ${toCreate} counted)`);
  // Skipped users are listed with their reasons (the Rust side seeds one without a phone).
  const skipped = page.locator('#skipped tbody tr');
  const skipRows = await skipped.count();
  for (let i = 0; i < skipRows; i++) {
    assert(/pstn_fixed/.test(await skipped.nth(i).textContent()), `skipped row ${i} gives the reason`);
  }
  await shot('preview');

  await page.locator('#mapping-card button.save').click();
  await textMatches(page.locator('#mapping-card .save-state'), /Saved/);

  // The second re-synchronise creates the users.
  await page.getByRole('button', { name: 'Re-synchronise' }).click();
  const outcome = page.locator('#run-outcome');
  await textMatches(outcome, new RegExp(`finished \\(succeeded\\): created ${toCreate},`));
  await textMatches(success, /Last successful synchronisation: .+/);
  assert((await page.locator('#history tbody tr').count()) >= 2, 'the run history lists both runs');
  await shot('users-created');

  // Swedish, remembered across a reload.
  await page.getByLabel('Language').selectOption('sv');
  await page.getByRole('button', { name: 'Synkronisera om' }).waitFor();
  await page.getByText('Senaste lyckade synkronisering').waitFor();
  await page.reload();
  await page.getByRole('heading', { name: 'Körningshistorik' }).waitFor();
  await page.getByText('Endast nya användare').waitFor();
  assert((await page.locator('html').getAttribute('lang')) === 'sv', 'the page says it is Swedish');
  await shot('swedish');

  report({ preview_create: toCreate, preview_skipped: skipRows, first_success: firstSuccess });
});
