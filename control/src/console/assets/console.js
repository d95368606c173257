// Latch console: the only script (served from /assets/, so the Content-Security-Policy allows
// no inline script). It follows live job tables, hides a revealed secret after 30 seconds and
// copies text on request. The pages work without it, except for those three things.
'use strict';

// Live jobs: every table with data-events follows its Server-Sent Events stream; each `jobs`
// event carries server-rendered rows (escaped by the server) that replace or precede the rows.
function followJobs(table) {
  const status = table.previousElementSibling;
  const body = table.tBodies[0];
  const source = new EventSource(table.dataset.events);
  source.addEventListener('jobs', (event) => {
    for (const job of JSON.parse(event.data)) {
      const template = document.createElement('template');
      template.innerHTML = job.html.trim();
      const row = template.content.firstElementChild;
      const existing = document.getElementById(row.id);
      if (existing) {
        existing.replaceWith(row);
      } else {
        const empty = body.querySelector('tr.empty');
        if (empty) empty.remove();
        body.prepend(row);
      }
    }
  });
  source.addEventListener('ended', (event) => {
    source.close();
    if (status) {
      status.textContent = event.data === 'session'
        ? 'Your session ended: reload the page to sign in again.'
        : 'Live updates stopped: you may no longer see these jobs.';
    }
  });
  source.onerror = () => {
    if (status) status.textContent = 'Live updates paused; retrying…';
  };
  source.onopen = () => {
    if (status) status.textContent = 'Rows update live.';
  };
}

// Reveal: POST the form with fetch, show the value in the page's memory only (never in any
// storage), and remove it after data-hide-after seconds.
function reveal(form) {
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const out = document.getElementById(form.dataset.output);
    const seconds = Number(form.dataset.hideAfter || '30');
    out.textContent = '';
    out.hidden = true;
    const response = await fetch(form.action, {
      method: 'POST',
      body: new URLSearchParams(new FormData(form)),
      headers: { Accept: 'application/json' },
      credentials: 'same-origin',
      cache: 'no-store',
    });
    const answer = await response.json().catch(() => ({ message: 'the answer could not be read' }));
    const code = form.querySelector('input[name=totp]');
    if (code) code.value = '';
    if (!response.ok) {
      out.textContent = `Not revealed: ${answer.message || response.statusText}`;
      out.className = 'notice error';
      out.hidden = false;
      return;
    }
    const value = document.createElement('code');
    value.className = 'secret';
    value.textContent = answer.secret;
    const countdown = document.createElement('span');
    countdown.className = 'muted';
    out.className = 'notice revealed';
    const parts = [value, ' ', countdown];
    if (answer.note) {
      const note = document.createElement('p');
      note.textContent = answer.note;
      parts.unshift(note);
    }
    out.replaceChildren(...parts);
    out.hidden = false;
    let left = seconds;
    countdown.textContent = `hides in ${left} s`;
    const timer = setInterval(() => {
      left -= 1;
      countdown.textContent = `hides in ${left} s`;
      if (left <= 0) {
        clearInterval(timer);
        out.replaceChildren('Hidden again. Reveal it again if you still need it.');
        out.className = 'notice';
      }
    }, 1000);
  });
}

function copyButton(button) {
  button.addEventListener('click', async () => {
    const source = document.getElementById(button.dataset.copy);
    try {
      await navigator.clipboard.writeText(source.textContent.trim());
      button.textContent = 'Copied';
    } catch {
      const range = document.createRange();
      range.selectNodeContents(source);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = 'Selected: press Ctrl+C';
    }
  });
}

document.addEventListener('DOMContentLoaded', () => {
  document.querySelectorAll('table[data-events]').forEach(followJobs);
  document.querySelectorAll('form[data-reveal]').forEach(reveal);
  document.querySelectorAll('button[data-copy]').forEach(copyButton);
});
