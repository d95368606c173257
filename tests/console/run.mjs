// The browser harness of the web console tests: `node run.mjs SCENARIO_FILE`.
//
// Launches Debian's Chromium (LATCH_CHROMIUM, default /usr/bin/chromium) through playwright-core,
// imports the scenario module and calls its default export, `async function (t)`, with the helper
// object `t` (see `const t` below). It talks to the Rust test (tests/src/browser.rs) in lines:
//
//   stdout  STEP ok NAME · STEP fail NAME: ERROR · CONSOLE … · AXE … · SCREENSHOT PATH · LOG …
//           ASK {"kind": …, "data": …}   (a request the Rust side answers on stdin)
//           FAIL MESSAGE AND STACK (then failure screenshots; exit status 1) · DONE (exit status 0)
//   stdin   {"answer": …} or {"error": "…"}, one line per ASK, in order
//
// Environment: LATCH_URL (the control plane, https://…) with LATCH_CA_FILE (its private CA),
// LATCH_CONSOLE_OUT (where screenshots and axe reports go), LATCH_CHROMIUM.
//
// TLS: the control plane's certificate comes from a private CA that Chromium does not know.
// Rather than ignoring every certificate error, this script connects to LATCH_URL with Node's TLS,
// verifies the server against LATCH_CA_FILE, and tells Chromium to accept exactly that server's
// public key (`--ignore-certificate-errors-spki-list`, SHA-256 of its SubjectPublicKeyInfo;
// Chromium honours it only with a --user-data-dir, which Playwright always passes). A
// certificate with another key is still refused.

import { X509Certificate, createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { connect } from 'node:tls';
import { pathToFileURL } from 'node:url';

import { AxeBuilder } from '@axe-core/playwright';
import { chromium } from 'playwright-core';

/** Writes one protocol line to stdout (continuation lines of a message are indented). */
function say(line) {
  process.stdout.write(`${String(line).replaceAll('\n', '\n    ')}\n`);
}

/** An error's message and stack (the stack of a V8 error starts with its message). */
function describe(error) {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}

/** A name usable as a file name: anything but letters, digits, `.`, `_` and `-` becomes `-`. */
function fileName(name) {
  return String(name).replace(/[^A-Za-z0-9._-]/g, '-');
}

/**
 * The base64 SHA-256 of the SubjectPublicKeyInfo of the server at `url`, after verifying its
 * certificate against the CA in `caFile` (and its name against the URL's host).
 */
function serverSpkiHash(url, caFile) {
  const { hostname, port } = new URL(url);
  return new Promise((done, fail) => {
    const socket = connect({ host: hostname, port: Number(port || 443), ca: readFileSync(caFile) });
    socket.once('secureConnect', () => {
      const raw = socket.getPeerCertificate().raw;
      socket.end();
      const spki = new X509Certificate(raw).publicKey.export({ type: 'spki', format: 'der' });
      done(createHash('sha256').update(spki).digest('base64'));
    });
    socket.once('error', (error) => fail(new Error(`TLS to ${url} with the CA ${caFile}: ${error.message}`)));
  });
}

/** Answers to `t.ask`, read from stdin a line each, handed to the waiting asks in order. */
function answers() {
  const waiting = [];
  let closed = false;
  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    const next = waiting.shift();
    if (!next) {
      say(`CONSOLE harness: an answer nobody asked for: ${line}`);
      return;
    }
    let reply;
    try {
      reply = JSON.parse(line);
    } catch (error) {
      next.fail(new Error(`ask ${next.kind}: the answer is not JSON (${error.message}): ${line}`));
      return;
    }
    if (reply !== null && typeof reply === 'object' && 'answer' in reply) {
      next.done(reply.answer);
    } else {
      next.fail(new Error(`ask ${next.kind}: ${reply?.error ?? `no answer in ${line}`}`));
    }
  });
  lines.on('close', () => {
    closed = true;
    for (const next of waiting.splice(0)) {
      next.fail(new Error(`ask ${next.kind}: standard input closed before the answer`));
    }
  });
  return {
    ask(kind, data) {
      return new Promise((done, fail) => {
        if (closed) {
          fail(new Error(`ask ${kind}: standard input is closed`));
          return;
        }
        waiting.push({ kind, done, fail });
        say(`ASK ${JSON.stringify({ kind, data: data ?? null })}`);
      });
    },
    close() {
      lines.close();
    },
  };
}

/** Reports CSP violations (enforced and report-only) to the `__latchCsp` binding. */
const CSP_LISTENER = `
  document.addEventListener('securitypolicyviolation', (event) => {
    window.__latchCsp(
      event.disposition + ' ' + event.effectiveDirective + ' blocked ' +
      (event.blockedURI || 'inline code') + ' at ' + event.sourceFile + ':' + event.lineNumber
    );
  });
`;

async function main() {
  const scenario = process.argv[2];
  if (!scenario) {
    throw new Error('usage: node run.mjs SCENARIO_FILE');
  }
  const env = process.env;
  const out = resolve(env.LATCH_CONSOLE_OUT ?? 'console-out');
  mkdirSync(out, { recursive: true });

  const args = ['--no-sandbox'];
  if (env.LATCH_URL?.startsWith('https:')) {
    if (!env.LATCH_CA_FILE) {
      throw new Error('LATCH_URL is https: LATCH_CA_FILE must name the CA that signed it');
    }
    args.push(`--ignore-certificate-errors-spki-list=${await serverSpkiHash(env.LATCH_URL, env.LATCH_CA_FILE)}`);
  }
  const browser = await chromium.launch({
    executablePath: env.LATCH_CHROMIUM || '/usr/bin/chromium',
    args,
    headless: true,
  });
  const replies = answers();
  const pageErrors = [];
  let pageCount = 0;

  /** Logs the console errors and warnings of `page`; collects its uncaught errors. */
  function watch(page) {
    const id = ++pageCount;
    page.on('console', (message) => {
      if (message.type() === 'error' || message.type() === 'warning') {
        const { url, lineNumber } = message.location();
        say(`CONSOLE page ${id} ${message.type()}: ${message.text()} (${url}:${lineNumber})`);
      }
    });
    page.on('pageerror', (error) => {
      say(`CONSOLE page ${id} uncaught: ${describe(error)}`);
      pageErrors.push(`uncaught error on page ${id} (${page.url()}): ${error.message}`);
    });
    page.on('crash', () => {
      say(`CONSOLE page ${id} crashed`);
      pageErrors.push(`page ${id} (${page.url()}) crashed`);
    });
  }

  const t = {
    browser,
    env,
    /** The control plane's URL (LATCH_URL). */
    url: env.LATCH_URL,
    /** The directory of screenshots and axe reports (LATCH_CONSOLE_OUT). */
    out,
    /** Uncaught page errors and CSP violations so far; the scenario fails if any remain. */
    pageErrors,

    /** A page in a fresh browser context (its own cookies and storage); `options` go to newContext. */
    async newPage(options = {}) {
      const context = await browser.newContext(options);
      await context.exposeBinding('__latchCsp', ({ page }, violation) => {
        say(`CONSOLE CSP violation: ${violation}`);
        pageErrors.push(`CSP violation on ${page.url()}: ${violation}`);
      });
      await context.addInitScript(CSP_LISTENER);
      context.on('page', watch);
      return context.newPage();
    },

    /** Runs `fn`, logging `STEP ok NAME` or `STEP fail NAME: ERROR` (and rethrowing). */
    async step(name, fn) {
      try {
        const value = await fn();
        say(`STEP ok ${name}`);
        return value;
      } catch (error) {
        say(`STEP fail ${name}: ${error instanceof Error ? error.message : String(error)}`);
        throw error;
      }
    },

    /** Asks the Rust test for something outside the browser; resolves to its answer. */
    ask(kind, data) {
      return replies.ask(kind, data);
    },

    /**
     * Runs axe-core on `page`; writes every result to OUT/axe-NAME.json; throws when a violation
     * is serious or critical. `configure(builder)` may narrow the AxeBuilder (include, exclude…).
     */
    async axe(page, name, configure = (builder) => builder) {
      const results = await configure(new AxeBuilder({ page })).analyze();
      const file = resolve(out, `axe-${fileName(name)}.json`);
      writeFileSync(file, JSON.stringify(results, null, 2));
      const blocking = results.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
      say(`AXE ${name}: ${results.violations.length} violations, ${blocking.length} serious or critical (${file})`);
      for (const violation of results.violations) {
        say(`AXE ${violation.id} (${violation.impact}): ${violation.help} ${violation.helpUrl}`);
        for (const node of violation.nodes) {
          say(`AXE   at ${node.target.join(' ')}`);
        }
      }
      if (blocking.length > 0) {
        throw new Error(`axe ${name}: serious or critical violations: ${blocking.map((v) => v.id).join(', ')}`);
      }
      return results;
    },

    /** Saves a full-page PNG of `page` as OUT/NAME.png; returns its path. */
    async screenshot(page, name) {
      const path = resolve(out, `${fileName(name)}.png`);
      await page.screenshot({ path, fullPage: true });
      say(`SCREENSHOT ${path}`);
      return path;
    },

    /** Throws `message` unless `condition` holds. */
    expect(condition, message) {
      if (!condition) {
        throw new Error(`expectation failed: ${message}`);
      }
    },

    /** Writes `LOG MESSAGE` to the test output. */
    log(message) {
      say(`LOG ${message}`);
    },
  };

  try {
    const module = await import(pathToFileURL(resolve(scenario)).href);
    await module.default(t);
    if (pageErrors.length > 0) {
      throw new Error(`the pages reported errors:\n${pageErrors.join('\n')}`);
    }
  } catch (error) {
    say(`FAIL ${describe(error)}`);
    let n = 0;
    for (const context of browser.contexts()) {
      for (const page of context.pages()) {
        n += 1;
        const path = resolve(out, `failure-${n}.png`);
        await page.screenshot({ path, fullPage: true }).then(
          () => say(`SCREENSHOT ${path}`),
          (shot) => say(`CONSOLE harness: no screenshot of page ${n}: ${shot.message}`),
        );
      }
    }
    return 1;
  } finally {
    replies.close();
    await browser.close();
  }
  say('DONE');
  return 0;
}

let status;
try {
  status = await main();
} catch (error) {
  say(`FAIL ${describe(error)}`);
  status = 1;
}
// Exit once stdout is written out (process.exit would cut a pending write to a pipe).
process.stdout.write('', () => process.exit(status));
