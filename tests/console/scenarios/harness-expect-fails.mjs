// Must fail (tests/tests/console_harness.rs): an expectation that does not hold.

export default async function (t) {
  const page = await t.newPage();
  await page.setContent('<!doctype html><html lang="en"><title>Jobs</title><h1>Jobs</h1></html>');
  await t.step('the heading says Hosts', async () => {
    const heading = await page.locator('h1').innerText();
    t.expect(heading === 'Hosts', `the heading is ${heading}, not Hosts`);
  });
}
