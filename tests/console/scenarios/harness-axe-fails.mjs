// Must fail (tests/tests/console_harness.rs): a field without a label and an image without alt
// text are critical accessibility violations.

export default async function (t) {
  const page = await t.newPage();
  await page.setContent(`<!doctype html>
    <html lang="en">
      <head><title>Broken form</title></head>
      <body><main><h1>Broken form</h1><form><input name="user"><img src="data:,"></form></main></body>
    </html>`);
  await t.step('the broken form passes axe', () => t.axe(page, 'broken-form'));
}
