// bazaar web: small progressive enhancements. Every page works without this script.
document.addEventListener('DOMContentLoaded', () => {
  // A currency menu submits itself when changed (its form has a button for no-JS browsers).
  for (const select of document.querySelectorAll('select[data-autosubmit]')) {
    select.addEventListener('change', () => select.form.submit());
  }
  // "Copy" buttons next to secrets shown once (API keys).
  for (const button of document.querySelectorAll('button[data-copy]')) {
    button.addEventListener('click', async () => {
      const target = document.getElementById(button.dataset.copy);
      if (target && navigator.clipboard) {
        await navigator.clipboard.writeText(target.textContent.trim());
        button.textContent = 'Copied';
      }
    });
  }
});
