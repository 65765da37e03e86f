/* Errand dashboard: progressive enhancement only.
 * Every page works without JavaScript except the live chart. Data shown on the
 * page is untrusted: this file only ever writes it through textContent, and SVG
 * attributes are computed from numbers. No innerHTML, no eval. */
(() => {
  'use strict';

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const byGroup = (selector, group) => $$(selector).filter((el) => el.dataset.group === group);
  const setText = (el, text) => { if (el.textContent !== text) el.textContent = text; };

  /* ---- 1. Theme toggle ----------------------------------------------------
   * Flips the effective theme (saved choice, else the system preference),
   * stores it for theme.js, and mirrors it in aria-pressed (pressed = dark). */
  const THEME_KEY = 'errand-theme';
  const darkQuery = window.matchMedia('(prefers-color-scheme: dark)');

  function effectiveTheme() {
    const chosen = document.documentElement.dataset.theme;
    if (chosen === 'light' || chosen === 'dark') return chosen;
    return darkQuery.matches ? 'dark' : 'light';
  }

  function initThemeToggle() {
    const button = document.getElementById('theme-toggle');
    if (!button) return;
    const sync = () => {
      const dark = effectiveTheme() === 'dark';
      button.setAttribute('aria-pressed', dark ? 'true' : 'false');
      button.title = dark ? 'Switch to light mode' : 'Switch to dark mode';
    };
    button.addEventListener('click', () => {
      const next = effectiveTheme() === 'dark' ? 'light' : 'dark';
      document.documentElement.dataset.theme = next;
      try { localStorage.setItem(THEME_KEY, next); } catch (_) { /* storage disabled */ }
      sync();
    });
    // Follow the OS while no choice is saved, and choices made in other tabs.
    darkQuery.addEventListener('change', sync);
    window.addEventListener('storage', (event) => {
      if (event.key !== THEME_KEY) return;
      if (event.newValue === 'light' || event.newValue === 'dark') {
        document.documentElement.dataset.theme = event.newValue;
      } else {
        delete document.documentElement.dataset.theme;
      }
      sync();
    });
    sync();
  }

  /* ---- 2. Relative times --------------------------------------------------
   * <time class="rel" data-epoch="…"> shows "3 minutes ago" / "in 5 minutes";
   * the title keeps the exact time (the server's, else the local one). */
  const UNITS = [['year', 31536000], ['month', 2592000], ['day', 86400],
    ['hour', 3600], ['minute', 60], ['second', 1]];

  function relativeTime(epochSeconds, nowSeconds) {
    const delta = epochSeconds - nowSeconds;
    const abs = Math.abs(delta);
    if (abs < 5) return 'just now';
    const [unit, size] = UNITS.find(([, seconds]) => abs >= seconds);
    const n = Math.floor(abs / size);
    const phrase = `${n} ${unit}${n === 1 ? '' : 's'}`;
    return delta < 0 ? `${phrase} ago` : `in ${phrase}`;
  }

  function refreshTimes() {
    const now = Date.now() / 1000;
    for (const el of $$('time.rel[data-epoch]')) {
      const epoch = parseFloat(el.dataset.epoch);
      if (!Number.isFinite(epoch)) continue;
      if (!el.title) el.title = new Date(epoch * 1000).toLocaleString();
      setText(el, relativeTime(epoch, now));
    }
  }

  /* ---- 3. Row selection ---------------------------------------------------
   * .select-all[data-group] toggles its group's .row-select boxes (shift-click
   * selects a range); .selected-count shows "N selected"; buttons of the #bulk
   * form and [data-needs-selection] buttons are disabled while nothing is
   * selected. */
  function refreshSelection() {
    const groups = new Set($$('.row-select[data-group], .select-all[data-group], .selected-count[data-group]')
      .map((el) => el.dataset.group));
    const counts = new Map();
    let total = 0;
    for (const group of groups) {
      const rows = byGroup('.row-select', group).filter((cb) => !cb.disabled);
      const n = rows.filter((cb) => cb.checked).length;
      counts.set(group, n);
      total += n;
      for (const all of byGroup('.select-all', group)) {
        all.checked = rows.length > 0 && n === rows.length;
        all.indeterminate = n > 0 && n < rows.length;
      }
      for (const label of byGroup('.selected-count', group)) setText(label, `${n} selected`);
    }
    // The bulk form counts only the boxes that would actually be submitted with it.
    const bulk = document.getElementById('bulk');
    if (bulk instanceof HTMLFormElement) {
      const n = $$('.row-select').filter((cb) => cb.checked && cb.form === bulk).length;
      for (const el of bulk.elements) {
        if (el instanceof HTMLButtonElement && !el.hasAttribute('data-needs-selection')) el.disabled = n === 0;
      }
    }
    // data-needs-selection="group" watches one group; an empty value watches all.
    for (const button of $$('[data-needs-selection]')) {
      const group = button.dataset.needsSelection;
      button.disabled = (group ? counts.get(group) || 0 : total) === 0;
    }
  }

  function initSelection() {
    const lastClicked = new Map();
    document.addEventListener('click', (event) => {
      const box = event.target;
      if (!(box instanceof HTMLInputElement) || !box.matches('.row-select[data-group]')) return;
      const group = box.dataset.group;
      const previous = lastClicked.get(group);
      const rows = byGroup('.row-select', group);
      if (event.shiftKey && previous && previous !== box && rows.includes(previous)) {
        const [from, to] = [rows.indexOf(previous), rows.indexOf(box)].sort((a, b) => a - b);
        for (const cb of rows.slice(from, to + 1)) if (!cb.disabled) cb.checked = box.checked;
        refreshSelection();
      }
      lastClicked.set(group, box);
    });
    document.addEventListener('change', (event) => {
      const box = event.target;
      if (!(box instanceof HTMLInputElement)) return;
      if (box.matches('.select-all[data-group]')) {
        for (const cb of byGroup('.row-select', box.dataset.group)) if (!cb.disabled) cb.checked = box.checked;
        refreshSelection();
      } else if (box.matches('.row-select[data-group]')) {
        refreshSelection();
      }
    });
    // Browsers restore checkbox state on back/forward navigation.
    window.addEventListener('pageshow', refreshSelection);
    refreshSelection();
  }

  /* ---- 4. Confirmations ---------------------------------------------------
   * data-confirm on the submit button (preferred) or on the form itself. */
  function initConfirm() {
    document.addEventListener('submit', (event) => {
      const submitter = event.submitter;
      const message = (submitter && submitter.dataset.confirm) || event.target.dataset.confirm;
      if (message && !window.confirm(message)) event.preventDefault();
    });
  }

  /* ---- 5. Gauges ----------------------------------------------------------
   * .bar[data-value][data-max] → width of .bar-fill; .is-high from 90 %. */
  function initBars() {
    for (const bar of $$('.bar[data-value][data-max]')) {
      const value = parseFloat(bar.dataset.value);
      const max = parseFloat(bar.dataset.max);
      const ratio = max > 0 && Number.isFinite(value) ? Math.min(Math.max(value / max, 0), 1) : 0;
      let fill = bar.querySelector('.bar-fill');
      if (!fill) {
        fill = document.createElement('div');
        fill.className = 'bar-fill';
        bar.appendChild(fill);
      }
      fill.style.width = `${(ratio * 100).toFixed(1)}%`;
      bar.classList.toggle('is-high', ratio >= 0.9);
      const aria = { role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': max || 0, 'aria-valuenow': value || 0 };
      for (const [key, val] of Object.entries(aria)) bar.setAttribute(key, String(val));
    }
  }

  /* ---- 6. Live chart and stat cards ---------------------------------------
   * .live[data-stream] opens an EventSource; each "stats" event carries
   * cumulative totals. Rates are Δcount/Δtime between consecutive events,
   * plotted over a fixed window with "now" at the right edge. Every
   * [data-stat=name] element gets the new total. Paused while the tab is hidden. */
  const MAX_POINTS = 60;
  const MIN_INTERVAL_S = 2;
  const VIEW = { w: 800, h: 200, left: 48, right: 12, top: 14, bottom: 24 };

  function svgEl(name, attrs, parent) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
    if (parent) parent.appendChild(el);
    return el;
  }

  // Smallest "nice" number (1, 2, 2.5, 5 × 10^k) at or above v.
  function niceCeil(v) {
    const magnitude = 10 ** Math.floor(Math.log10(v));
    for (const step of [1, 2, 2.5, 5]) if (v <= step * magnitude) return step * magnitude;
    return 10 * magnitude;
  }

  const formatRate = (v) => (v >= 100 ? Math.round(v).toLocaleString('en-US') : String(+v.toFixed(1)));

  function buildChart(svg, spanSeconds) {
    const { w, h, left, right, top, bottom } = VIEW;
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    svg.setAttribute('role', 'img');
    svg.textContent = '';
    const grid = svgEl('g', { class: 'grid' }, svg);
    for (let i = 0; i <= 4; i += 1) {
      const y = top + ((h - top - bottom) * i) / 4;
      const line = svgEl('line', { x1: left, x2: w - right, y1: y, y2: y }, grid);
      if (i === 4) line.setAttribute('class', 'baseline');
    }
    const chart = {
      area: svgEl('polygon', { class: 'area area-processed', points: '' }, svg),
      processed: svgEl('polyline', { class: 'series series-processed', points: '' }, svg),
      failed: svgEl('polyline', { class: 'series series-failed', points: '' }, svg),
    };
    const axis = svgEl('g', { class: 'axis' }, svg);
    chart.yMax = svgEl('text', { x: left - 8, y: top + 4, 'text-anchor': 'end' }, axis);
    svgEl('text', { x: left - 8, y: h - bottom + 4, 'text-anchor': 'end' }, axis).textContent = '0';
    svgEl('text', { x: w - right, y: h - 6, 'text-anchor': 'end' }, axis).textContent = 'now';
    const minutes = spanSeconds / 60;
    svgEl('text', { x: left, y: h - 6, 'text-anchor': 'start' }, axis).textContent =
      minutes >= 1 ? `${+minutes.toFixed(1)} min ago` : `${Math.round(spanSeconds)} s ago`;
    chart.yMax.textContent = '1/s';
    return chart;
  }

  function drawChart(chart, points, spanSeconds) {
    const { w, h, left, right, top, bottom } = VIEW;
    const plotW = w - left - right;
    const plotH = h - top - bottom;
    const base = h - bottom;
    const latest = points.length ? points[points.length - 1].t : 0;
    const peak = points.reduce((m, p) => Math.max(m, p.processed, p.failed), 0);
    const max = niceCeil(Math.max(peak, 1));
    const x = (p) => (left + plotW * (1 - (latest - p.t) / spanSeconds)).toFixed(1);
    const y = (v) => (base - (v / max) * plotH).toFixed(1);
    const line = (key) => points.map((p) => `${x(p)},${y(p[key])}`).join(' ');
    chart.processed.setAttribute('points', line('processed'));
    chart.failed.setAttribute('points', line('failed'));
    chart.area.setAttribute('points', points.length > 1
      ? `${x(points[0])},${base} ${line('processed')} ${x(points[points.length - 1])},${base}` : '');
    setText(chart.yMax, `${formatRate(max)}/s`);
  }

  function updateStatCards(data) {
    for (const el of $$('[data-stat]')) {
      const value = data[el.dataset.stat];
      if (typeof value === 'number' && Number.isFinite(value)) setText(el, value.toLocaleString('en-US'));
    }
  }

  function initLive(root) {
    const url = new URL(root.dataset.stream, window.location.href);
    const requested = parseFloat(url.searchParams.get('interval'));
    if (Number.isFinite(requested) && requested < MIN_INTERVAL_S) url.searchParams.set('interval', String(MIN_INTERVAL_S));
    const interval = Math.max(MIN_INTERVAL_S, Number.isFinite(requested) ? requested : MIN_INTERVAL_S);
    const span = (MAX_POINTS - 1) * interval;

    let svg = root.querySelector('svg.live-chart');
    if (!svg) {
      svg = svgEl('svg', { class: 'chart live-chart', 'aria-label': 'Processed and failed per second' });
      root.prepend(svg);
    }
    let status = root.querySelector('.live-status');
    if (!status) {
      status = document.createElement('div');
      status.className = 'live-status';
      status.setAttribute('aria-live', 'polite');
      root.appendChild(status);
    }
    const setStatus = (text, state) => { setText(status, text); status.dataset.state = state; };
    const chart = buildChart(svg, span);

    let source = null;
    let retryTimer = 0;
    let last = null; // previous totals: { t, processed, failed }
    let points = []; // rates per second: { t, processed, failed }

    const rate = (now, before, dt) => {
      const r = (Number(now) - Number(before)) / dt;
      return Number.isFinite(r) && r > 0 ? r : 0; // counter resets never go negative
    };

    function onStats(event) {
      let data;
      try { data = JSON.parse(event.data); } catch (_) { return; }
      if (!data || typeof data !== 'object') return;
      updateStatCards(data);
      const t = Number(data.time);
      if (!Number.isFinite(t) || (last && t <= last.t)) return;
      let period = interval;
      if (last) {
        period = t - last.t;
        points.push({ t, processed: rate(data.processed, last.processed, period), failed: rate(data.failed, last.failed, period) });
        points = points.filter((p) => t - p.t <= span).slice(-MAX_POINTS);
        drawChart(chart, points, span);
      }
      last = { t, processed: data.processed, failed: data.failed };
      setStatus(`live · ${Math.max(1, Math.round(period))} s`, 'live');
    }

    function stop() {
      clearTimeout(retryTimer);
      if (source) source.close();
      source = null;
    }


    function start() {
      if (source || document.hidden) return;
      clearTimeout(retryTimer);
      last = null; // the first event after (re)opening is a new baseline
      setStatus('connecting…', 'connecting');
      source = new EventSource(url.href);
      source.addEventListener('stats', onStats);
      source.addEventListener('error', () => {
        if (!source) return;
        if (source.readyState === EventSource.CLOSED) {
          // The browser gave up (e.g. an HTTP error): try again, slowly.
          stop();
          setStatus('reconnecting…', 'error');
          retryTimer = setTimeout(start, 10000);
        } else {
          setStatus('reconnecting…', 'error'); // EventSource retries by itself
        }
      });
    }

    document.addEventListener('visibilitychange', () => {
      if (document.hidden) {
        stop();
        setStatus('paused', 'paused');
      } else {
        start();
      }
    });
    window.addEventListener('pagehide', stop);
    window.addEventListener('pageshow', (event) => { if (event.persisted) start(); });
    if (document.hidden) setStatus('paused', 'paused');
    start();
  }

  /* ---- Start-up ------------------------------------------------------------ */
  function init() {
    initThemeToggle();
    refreshTimes();
    setInterval(refreshTimes, 10000);
    document.addEventListener('visibilitychange', () => { if (!document.hidden) refreshTimes(); });
    initSelection();
    initConfirm();
    initBars();
    $$('.live[data-stream]').forEach(initLive);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
