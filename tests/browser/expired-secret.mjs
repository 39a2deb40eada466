// An expired client secret shown as such: the Rust side has made the Graph
// simulator refuse the secret (AADSTS7000222); the admin re-synchronises and the
// page says the secret expired and what to do.
//
// Env: BASE_URL TOKEN TENANT SCREENSHOTS

import { pageUrl, run, textMatches } from './lib.mjs';

await run('expired-secret', async (page, shot) => {
  await page.goto(pageUrl());
  await page.getByRole('heading', { name: /Acme AB/ }).waitFor();
  await page.getByRole('button', { name: 'Re-synchronise' }).click();
  const error = page.locator('#last-error');
  await textMatches(error, /The last synchronisation failed/);
  await textMatches(page.locator('#last-error-advice'), /client secret has expired.*Create a new client secret in Entra ID.*paste its value as client_secret/);
  await textMatches(page.locator('#run-outcome'), /ended failed/);
  await page.locator('#history .badge.failed').first().waitFor();
  await shot('secret-expired');
});
