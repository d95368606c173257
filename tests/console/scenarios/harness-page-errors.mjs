// Must fail (tests/tests/console_harness.rs): a page whose Content-Security-Policy blocks its
// inline script, and a page whose script throws. Both are collected while the scenario goes on
// and fail it at the end.

export default async function (t) {
  const page = await t.newPage();
  await page.route('https://console.invalid/**', (route) => {
    const csp = route.request().url().endsWith('/csp');
    route.fulfill({
      contentType: 'text/html',
      headers: csp ? { 'content-security-policy': "default-src 'self'" } : {},
      body: csp
        ? '<!doctype html><html lang="en"><title>CSP</title><script>document.title = "ran"</script></html>'
        : '<!doctype html><html lang="en"><title>Throws</title><script>notDefined()</script></html>',
    });
  });
  await t.step('open a page whose inline script breaks the CSP', async () => {
    await page.goto('https://console.invalid/csp');
    t.expect((await page.title()) === 'CSP', 'the inline script was blocked');
  });
  await t.step('open a page whose script throws', () => page.goto('https://console.invalid/throws'));
  // The CSP report event and the page error arrive asynchronously.
  await page.waitForTimeout(300);
  t.log(`collected: ${t.pageErrors.length}`);
}
