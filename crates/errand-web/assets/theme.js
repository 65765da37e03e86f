// Errand: apply the saved theme before first paint (loaded synchronously in <head>).
// Without a saved choice nothing is set and the CSS follows prefers-color-scheme.
(function () {
  try {
    var theme = localStorage.getItem('errand-theme');
    if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;
  } catch (e) { /* storage unavailable (privacy mode): follow the system theme */ }
})();
