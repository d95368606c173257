// Just-in-time access in the web console (tests/tests/console.rs): eve (end_user) sees no admin
// page and gets 403 from their URLs, requests sudo on the host with a generated key (offered
// once as a download), and cannot approve her own request; mark (approver) sets up an
// authenticator app in the console, is refused without a second factor, approves after a TOTP
// step-up, and the request becomes active on the host;
// eve revokes it early. axe-core runs on every page.
//
// Environment: LATCH_URL, LATCH_HOST (the test host's name), LATCH_PASSWORD (eve's and mark's).

export default async function (t) {
  const { LATCH_HOST: host, LATCH_PASSWORD: password } = t.env;

  async function signIn(page, name) {
    await page.goto(`${t.url}/login`);
    await page.getByLabel('User name').fill(name);
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForURL((url) => url.pathname !== '/login');
  }

  const eve = await t.newPage({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  await t.step('an end_user sees no admin pages and gets 403 from their URLs', async () => {
    await signIn(eve, 'eve');
    await eve.goto(`${t.url}/access`);
    const nav = await eve.getByRole('navigation', { name: 'Sections' }).innerText();
    for (const hidden of ['Jobs', 'Hosts', 'Audit']) {
      t.expect(!nav.includes(hidden), `eve's navigation shows ${hidden}: ${nav}`);
    }
    for (const path of ['/jobs', '/hosts', '/audit', `/hosts/${host}`]) {
      const response = await eve.goto(`${t.url}${path}`);
      t.expect(response.status() === 403, `${path}: ${response.status()}`);
      const text = await eve.locator('main').innerText();
      t.expect(!text.includes(host) || path.includes(host), `${path} shows the host: ${text}`);
    }
    await t.axe(eve, 'forbidden');
    await t.screenshot(eve, 'forbidden');
    await eve.goto(`${t.url}/access`);
    await t.axe(eve, 'access-end-user');
    await t.screenshot(eve, 'access-end-user');
  });

  let request;
  await t.step('eve requests sudo with a generated key, offered once as a download', async () => {
    await eve.getByLabel('Host (name or id)').fill(host);
    await eve.getByLabel('Access', { exact: true }).selectOption('sudo');
    await eve.getByLabel('For how long (from when it becomes active)').selectOption('15');
    await eve.getByLabel('Why (1–500 characters)').fill('INC-4711: replication stuck <b>now</b>');
    await eve.getByRole('button', { name: 'Request access' }).click();
    await eve.getByText('Download the private key now').waitFor();
    await t.axe(eve, 'access-requested');
    await t.screenshot(eve, 'access-requested');
    const [download] = await Promise.all([
      eve.waitForEvent('download'),
      eve.getByRole('link', { name: /Download private key/ }).click(),
    ]);
    const stream = await download.createReadStream();
    let key = '';
    for await (const chunk of stream) key += chunk;
    t.expect(key.startsWith('-----BEGIN OPENSSH PRIVATE KEY-----'), 'an OpenSSH private key');
    await eve.getByRole('link', { name: 'Follow the request' }).click();
    request = new URL(eve.url()).pathname.split('/').pop();
    t.expect(request.startsWith('ar_'), `request id ${request}`);
    const text = await eve.locator('main').innerText();
    t.expect(text.includes('pending_approval'), text);
    t.expect(text.includes('<b>now</b>'), 'the reason is shown as text, escaped');
  });

  await t.step('the requester cannot approve her own request', async () => {
    t.expect((await eve.getByRole('button', { name: 'Approve' }).count()) === 0, 'eve sees Approve');
    // The form she does not get, posted by hand from her page (with her CSRF token).
    const status = await eve.evaluate(async (path) => {
      const body = new URLSearchParams({ _csrf: document.body.dataset.csrf, reason: 'self' });
      const response = await fetch(path, { method: 'POST', body, redirect: 'manual' });
      return response.status;
    }, `/access/requests/${request}/approve`);
    t.expect(status === 403, `eve approving: ${status}`);
    await t.axe(eve, 'access-request');
  });

  const mark = await t.newPage({ viewport: { width: 1280, height: 800 } });
  let secret;
  await t.step('the approver sets up an authenticator app in the console', async () => {
    await signIn(mark, 'mark');
    await mark.goto(`${t.url}/account`);
    await t.axe(mark, 'account');
    await mark.getByRole('button', { name: 'Set up' }).click();
    secret = await mark.locator('#totp-secret').innerText();
    t.expect(/^[A-Z2-7]{16,}$/.test(secret), `a base32 secret: ${secret}`);
    t.expect((await mark.locator('figure.qr svg').count()) === 1, 'a QR code');
    await t.axe(mark, 'account-totp');
    await t.screenshot(mark, 'account-totp');
    await mark.getByLabel("The app's first code").fill(await t.ask('totp', { secret }));
    await mark.getByRole('button', { name: 'Confirm' }).click();
    await mark.waitForURL(`${t.url}/account`);
    const text = await mark.locator('dl.facts').innerText();
    t.expect(text.includes('confirmed'), `after the first code: ${text}`);
  });

  await t.step('the approver is asked for a second factor, then approves', async () => {
    // A new session: the code that confirmed the app stepped up the first one.
    await mark.context().clearCookies();
    await signIn(mark, 'mark');
    await mark.goto(`${t.url}/access`);
    const waiting = mark.locator(`#waiting-${request}`);
    await waiting.waitFor();
    await t.axe(mark, 'access-approver');
    await t.screenshot(mark, 'access-approver');
    await waiting.getByRole('link').click();
    await mark.getByRole('button', { name: 'Approve' }).click();
    const refused = await mark.locator('.notice.error').innerText();
    t.expect(refused.includes('second factor'), `without a code: ${refused}`);
    const code = await t.ask('totp', { secret });
    await mark.getByLabel(/Authenticator code/).first().fill(code);
    await mark.getByRole('button', { name: 'Approve' }).click();
    await mark.waitForURL(`${t.url}/access/requests/${request}`);
    const text = await mark.locator('main').innerText();
    t.expect(!text.includes('pending_approval'), `after approval: ${text}`);
    t.expect(text.includes('mark approve'), `the decision is listed: ${text}`);
  });

  await t.step('the grant becomes active on the host', async () => {
    for (let i = 0; i < 60; i += 1) {
      await eve.goto(`${t.url}/access/requests/${request}`);
      if ((await eve.locator('dl.facts').innerText()).includes('active')) break;
      await eve.waitForTimeout(1000);
    }
    t.expect((await eve.locator('dl.facts').innerText()).includes('active'), 'the request is active');
    const present = await t.ask('account-on-host', { request });
    t.expect(present === true, 'the account exists on the host');
    await eve.goto(`${t.url}/access`);
    await eve.locator(`#active-${request}`).waitFor();
    await t.screenshot(eve, 'access-active');
  });

  await t.step('eve revokes it early and the account is removed', async () => {
    await eve.goto(`${t.url}/access/requests/${request}`);
    await eve.getByLabel('Reason (optional)').last().fill('done');
    await eve.getByRole('button', { name: 'Revoke now' }).click();
    await eve.waitForURL(`${t.url}/access/requests/${request}`);
    const gone = await t.ask('account-removed', { request });
    t.expect(gone === true, 'the account is gone from the host');
  });
}
