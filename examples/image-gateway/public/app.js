// The upload page: choose an image, Analyze, spinner, then the predictions
// or the gateway's error message. No build step, no dependencies.
// The API is this page's own /api/v1/analyze; ?api=<url> points it elsewhere.
(function () {
  'use strict';
  var API = new URLSearchParams(location.search).get('api') || '/api/v1/analyze';
  var $ = function (id) { return document.getElementById(id); };
  var input = $('file'), button = $('analyze'), spinner = $('spinner');
  var errorBox = $('error'), results = $('results'), list = $('predictions');
  var preview = $('preview');
  var file = null;

  function showError(msg) {
    errorBox.textContent = msg;
    errorBox.hidden = false;
  }

  function reset() {
    errorBox.hidden = true;
    errorBox.textContent = '';
    results.hidden = true;
    list.textContent = '';
  }

  input.addEventListener('change', function () {
    file = input.files && input.files[0] ? input.files[0] : null;
    $('file-name').textContent = file ? file.name : 'Select image';
    button.disabled = !file;
    reset();
    if (file) {
      preview.src = URL.createObjectURL(file);
      preview.hidden = false;
    } else {
      preview.hidden = true;
    }
  });

  // The data URL's base64 part (after "data:<mime>;base64,").
  function toBase64(f) {
    return new Promise(function (resolve, reject) {
      var reader = new FileReader();
      reader.onload = function () { resolve(String(reader.result).split(',')[1] || ''); };
      reader.onerror = function () { reject(reader.error || new Error('could not read the file')); };
      reader.readAsDataURL(f);
    });
  }

  function render(predictions) {
    predictions.forEach(function (p) {
      var li = document.createElement('li');
      li.className = 'prediction';
      var label = document.createElement('span');
      label.className = 'pred-label';
      label.textContent = String(p.label || '').replace(/_/g, ' ');
      var conf = document.createElement('span');
      conf.className = 'pred-confidence';
      var pct = (Number(p.confidence) * 100).toFixed(2);
      conf.textContent = 'Confidence: ' + pct + '%';
      var bar = document.createElement('div');
      bar.className = 'bar';
      var fill = document.createElement('span');
      fill.style.width = Math.max(0, Math.min(100, Number(pct))) + '%';
      bar.appendChild(fill);
      li.appendChild(label);
      li.appendChild(conf);
      li.appendChild(bar);
      list.appendChild(li);
    });
    results.hidden = false;
  }

  button.addEventListener('click', async function () {
    if (!file) return;
    reset();
    button.disabled = true;
    input.disabled = true;
    spinner.hidden = false;
    document.body.setAttribute('aria-busy', 'true');
    try {
      var base64Image = await toBase64(file);
      var response = await fetch(API, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ base64Image: base64Image })
      });
      var data = null;
      try { data = await response.json(); } catch (e) { data = null; }
      if (!response.ok) {
        throw new Error((data && data.message) || ('request failed with status ' + response.status));
      }
      if (!Array.isArray(data)) throw new Error('unexpected answer from the gateway');
      render(data);
    } catch (err) {
      showError(err && err.message ? err.message : 'Failed to connect to the server.');
    } finally {
      spinner.hidden = true;
      button.disabled = !file;
      input.disabled = false;
      document.body.removeAttribute('aria-busy');
    }
  });
})();
