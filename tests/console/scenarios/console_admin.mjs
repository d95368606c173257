// The web console as an admin (tests/tests/console.rs): sign in through the identity provider,
// watch a job turn from pending to confirmed without a reload, read a failed job's reason,
// enroll a host's account into the vault in one click, reveal its new password (the Rust test
// checks it with pamtester on the host; hidden again after 30 s, never in storage), make an
// enrollment token, read the audit trail, be refused a form without its CSRF token, sign out.
// axe-core runs on every page; each page is saved as a screenshot.
//
// Environment: LATCH_URL, OIDC_ISSUER (the test provider), LATCH_HOST (the test host's name),
// LATCH_VAULT (a vault the admin manages).

export default async function (t) {
  const { OIDC_ISSUER: issuer, LATCH_HOST: host, LATCH_VAULT: vault } = t.env;
  const page = await t.newPage({ viewport: { width: 1280, height: 800 } });
  let reloads = 0;
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) reloads += 1;
  });

  await t.step('carol signs in through the identity provider', async () => {
    const chosen = await fetch(`${issuer}/test/next?account=carol`, { method: 'POST' });
    t.expect(chosen.ok, `the provider took the account: ${chosen.status}`);
    await page.goto(`${t.url}/jobs`);
    t.expect(new URL(page.url()).pathname === '/login', `not signed in, at ${page.url()}`);
    await t.axe(page, 'login');
    await t.screenshot(page, 'login');
    await page.getByRole('link', { name: 'Sign in with your identity provider' }).click();
    await page.waitForURL(`${t.url}/jobs`);
    const who = await page.locator('.who strong').innerText();
    t.expect(who === 'carol', `signed in as ${who}`);
  });

  await t.step('a job queued elsewhere turns confirmed without a reload', async () => {
    await page.goto(`${t.url}/jobs`);
    await page.locator('.live-status').waitFor();
    const before = reloads;
    const { id } = await t.ask('queue-job-while-agent-stopped', {});
    const row = page.locator(`#job-${id}`);
    await row.waitFor({ timeout: 15000 });
    t.expect((await row.getAttribute('data-status')) === 'pending', 'the new row is pending');
    await t.ask('start-agent', {});
    await page.locator(`#job-${id}[data-status="confirmed"]`).waitFor({ timeout: 60000 });
    t.expect(reloads === before, `the page was reloaded ${reloads - before} times`);
    await t.axe(page, 'jobs');
    await t.screenshot(page, 'jobs');
  });

  await t.step("a failed job shows its code, message and what to do", async () => {
    const { id } = await t.ask('queue-failing-job', {});
    const failed = page.locator(`#job-${id}[data-status="failed"]`);
    await failed.waitFor({ timeout: 60000 });
    const text = await failed.innerText();
    t.expect(text.includes('group_not_allowed'), `the code: ${text}`);
    t.expect(text.includes('What to do'), `what to do: ${text}`);
    await page.goto(`${t.url}/jobs?state=failed`);
    const rows = await page.locator('table.jobs tbody tr[data-status]').count();
    const failedRows = await page.locator('table.jobs tbody tr[data-status="failed"]').count();
    t.expect(rows >= 1 && rows === failedRows, `the filter shows failed jobs only: ${failedRows}/${rows}`);
    await t.screenshot(page, 'jobs-failed');
  });

  await t.step('the hosts page lists the host online', async () => {
    await page.goto(`${t.url}/hosts`);
    const row = page.locator(`#host-${host}`);
    await row.waitFor();
    t.expect((await row.innerText()).includes('online'), await row.innerText());
    await t.axe(page, 'hosts');
    await t.screenshot(page, 'hosts');
  });

  await t.step('an enrollment token comes with the command to copy', async () => {
    await page.getByText('Enroll a new host').click();
    await page.getByRole('button', { name: 'Create enrollment token' }).click();
    const command = await page.locator('#enroll-command').innerText();
    t.expect(command.includes('latch-agent enroll') && command.includes('latch_enroll_'), command);
    await t.axe(page, 'enroll-token');
    await t.screenshot(page, 'enroll-token');
  });

  let identity;
  await t.step('one click enrolls an existing account, and its jobs turn confirmed', async () => {
    await page.goto(`${t.url}/hosts`);
    await page.getByRole('link', { name: host, exact: true }).click();
    await t.axe(page, 'host');
    await page.getByLabel('Account on the host').fill('deploy');
    await page.getByLabel('Vault').selectOption({ label: vault });
    await page.getByRole('button', { name: 'Enroll account' }).click();
    await page.waitForURL(/enrolled=/);
    identity = new URL(page.url()).searchParams.get('enrolled');
    for (const kind of ['adopt-account', 'set-password']) {
      await page
        .locator('table.jobs tbody tr[data-status="confirmed"]', { hasText: kind })
        .first()
        .waitFor({ timeout: 60000 });
    }
    await t.screenshot(page, 'host-enrolled');
    // Every job of this run, for the README: confirmed, failed, the enrollment's.
    await page.goto(`${t.url}/jobs`);
    await t.screenshot(page, 'jobs-all');
  });

  await t.step('reveal shows the password for 30 seconds, in no storage', async () => {
    await page.goto(`${t.url}/vault`);
    await t.axe(page, 'vault');
    // The first password counts once the control plane settled the rotation (its sweep runs
    // each second after the host confirmed): until then there is nothing to reveal.
    const reveal = page.getByRole('button', { name: 'Reveal' });
    for (let i = 0; i < 30; i += 1) {
      await page.goto(`${t.url}/vault/identities/${identity}`);
      if ((await reveal.count()) > 0) break;
      await page.waitForTimeout(1000);
    }
    await t.axe(page, 'identity');
    await reveal.click();
    const secret = page.locator('#reveal-output code.secret');
    await secret.waitFor({ timeout: 10000 });
    const value = await secret.innerText();
    const accepted = await t.ask('pam-accepts', { user: 'deploy', password: value });
    t.expect(accepted === true, 'PAM on the host accepts the revealed password');
    await t.screenshot(page, 'identity-revealed');
    const stored = await page.evaluate(() => [localStorage.length, sessionStorage.length]);
    t.expect(stored[0] === 0 && stored[1] === 0, `storage holds ${stored}`);
    await page.waitForTimeout(31000);
    t.expect((await secret.count()) === 0, 'the password is still shown after 30 s');
    const html = await page.content();
    t.expect(!html.includes(value), 'the password is still in the page');
  });

  await t.step('check out with a reason and a duration, then check in', async () => {
    await page.goto(`${t.url}/vault/identities/${identity}`);
    await page.getByLabel('Reason', { exact: true }).fill('INC-4712: rotate the TLS keys');
    await page.getByLabel('For', { exact: true }).selectOption('15');
    await page.getByRole('button', { name: 'Check out' }).click();
    const secret = page.locator('#checkout-output code.secret');
    await secret.waitFor({ timeout: 10000 });
    const note = await page.locator('#checkout-output').innerText();
    t.expect(note.includes('Checked out until'), note);
    await page.goto(`${t.url}/vault/identities/${identity}`);
    const row = page.locator('#checkouts tbody tr', { hasText: 'INC-4712' });
    t.expect((await row.innerText()).includes('checked_out'), await row.innerText());
    await t.screenshot(page, 'identity-checked-out');
    await row.getByRole('button', { name: 'Check in' }).click();
    await page.waitForURL(`${t.url}/vault/identities/${identity}`);
    const after = await page.locator('#checkouts tbody tr', { hasText: 'INC-4712' }).innerText();
    t.expect(after.includes('checked in'), `after check-in: ${after}`);
  });

  await t.step('the audit trail verifies and filters', async () => {
    await page.goto(`${t.url}/audit`);
    t.expect((await page.locator('main').innerText()).includes('The audit chain verifies'), 'verified');
    await t.axe(page, 'audit');
    await t.screenshot(page, 'audit');
    await page.getByLabel('Action starts with').fill('vault.');
    await page.getByRole('button', { name: 'Filter' }).click();
    const actions = await page.locator('#audit tbody td:nth-child(4)').allInnerTexts();
    t.expect(actions.length > 0 && actions.every((a) => a.startsWith('vault.')), actions.join(','));
  });

  await t.step('the access page renders for an admin', async () => {
    await page.goto(`${t.url}/access`);
    await t.axe(page, 'access-admin');
  });

  await t.step('a form posted without its CSRF token is refused', async () => {
    await page.goto(`${t.url}/hosts`);
    await page.getByText('Enroll a new host').click();
    await page.evaluate(() => {
      document.querySelector('form[action="/enroll-tokens"] input[name="_csrf"]').remove();
    });
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith('/enroll-tokens')),
      page.getByRole('button', { name: 'Create enrollment token' }).click(),
    ]);
    t.expect(response.status() === 403, `status ${response.status()}`);
    t.expect((await page.content()).includes('csrf_refused'), 'the refusal names csrf_refused');
    t.expect(!(await page.content()).includes('latch_enroll_'), 'no token was made');
  });

  await t.step('sign out ends the session', async () => {
    await page.goto(`${t.url}/jobs`);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL(/\/login/);
    await page.goto(`${t.url}/jobs`);
    t.expect(new URL(page.url()).pathname === '/login', `after sign-out: ${page.url()}`);
  });
}
