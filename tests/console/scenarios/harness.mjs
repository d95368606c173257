// The harness itself (tests/tests/console_harness.rs): a page of the real control plane over
// HTTPS with its private CA, an ask the Rust test answers, a screenshot, and axe on a form.

const FORM = `<!doctype html>
<html lang="en">
  <head><title>Sign in</title></head>
  <body>
    <main>
      <h1>Sign in</h1>
      <form>
        <label for="user">User name</label>
        <input id="user" name="user" autocomplete="username">
        <button type="submit">Sign in</button>
      </form>
    </main>
  </body>
</html>`;

export default async function (t) {
  const page = await t.newPage();

  await t.step('the health endpoint answers over HTTPS', async () => {
    const response = await page.goto(`${t.url}/v1/health`);
    t.expect(response.ok(), `GET /v1/health: ${response.status()}`);
    const body = await response.json();
    t.expect(body.status === 'ok', `health body: ${JSON.stringify(body)}`);
  });

  await t.step('the Rust test answers an ask', async () => {
    const sum = await t.ask('sum', { a: 2, b: 3 });
    t.expect(sum === 5, `2 + 3 = ${sum}`);
  });

  await t.step('an ask the Rust test refuses rejects', async () => {
    const refused = await t.ask('unknown', {}).then(
      () => null,
      (error) => error.message,
    );
    t.expect(refused?.includes('no such ask: unknown'), `the refusal: ${refused}`);
  });

  await t.step('a second page has cookies of its own', async () => {
    await page.context().addCookies([{ name: 'session', value: 'first', url: t.url }]);
    const other = await t.newPage();
    const cookies = await other.context().cookies(t.url);
    t.expect(cookies.length === 0, `the second page sees ${JSON.stringify(cookies)}`);
    await other.context().close();
  });

  await t.step('screenshot', () => t.screenshot(page, 'health'));

  await t.step('a labelled form passes axe', async () => {
    await page.setContent(FORM);
    await t.axe(page, 'form');
  });
}
