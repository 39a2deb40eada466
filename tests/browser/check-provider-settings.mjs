// Reads a JSON list of pasted Provider Settings strings on stdin and prints, for
// each, the fields the page's live check flags: the Rust side compares them with
// the core's own refusals (tests/e2e/tests/e2e/page.rs).

import { checkProviderSettings } from '../../services/api/assets/provider-settings.js';

let input = '';
for await (const chunk of process.stdin) input += chunk;
const flagged = JSON.parse(input).map((pasted) => [...new Set(checkProviderSettings(pasted).map((p) => p.field))].sort());
console.log(JSON.stringify(flagged));
