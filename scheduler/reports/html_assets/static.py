"""The stylesheet and the item-table filter script, inlined into every HTML report."""

CSS = """
:root{--fg:#0f172a;--muted:#64748b;--faint:#94a3b8;--line:#e2e8f0;--bg:#f8fafc;
--card:#fff;--accent:#3b6fd8;--accent-soft:#dbe6fa;--good:#15803d;--good-soft:#dcfce7;
--bad:#c2410c;--bad-soft:#fee2e2;--drift:#dc2626}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:32px 24px 64px}
h1{font-size:26px;font-weight:650;margin:0 0 4px;letter-spacing:-.01em}
h2{font-size:17px;font-weight:620;margin:36px 0 12px}
h3{font-size:15px;font-weight:620;margin:0}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.sub{color:var(--muted)}
.sub b{color:var(--fg);font-weight:560}
.pill{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;
background:var(--line);color:#334155;vertical-align:3px;margin-left:8px}
.pill.good{background:var(--good-soft);color:var(--good)}
.pill.bad{background:var(--bad-soft);color:var(--bad)}
.warn{background:#fff7ed;border:1px solid #fed7aa;color:#9a3412;border-radius:8px;
padding:8px 12px;margin-top:16px}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px;
margin-top:22px}
.stat,.card{background:var(--card);border:1px solid var(--line);border-radius:10px}
.stat{padding:12px 16px}
.k{font-size:11.5px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.v{font-size:21px;font-weight:620;font-variant-numeric:tabular-nums;margin-top:2px}
.d{font-size:12.5px;color:var(--muted);font-variant-numeric:tabular-nums}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:16px}
.card{padding:16px 18px}
.card .head{display:flex;justify-content:space-between;align-items:baseline;gap:12px}
.big{font-size:30px;font-weight:650;font-variant-numeric:tabular-nums}
.facts{display:flex;flex-wrap:wrap;gap:4px 18px;margin:4px 0 10px;color:var(--muted);
font-size:13px;font-variant-numeric:tabular-nums}
.facts b{color:var(--fg);font-weight:560}
.chart-title{font-size:12px;color:var(--muted);margin:14px 0 4px}
svg.chart{display:block;width:100%;height:auto}
svg.chart text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;
font-size:11px;fill:#475569}
svg.chart .grid{stroke:#eef2f7}
svg.chart .axis{stroke:#cbd5e1}
.toolbar{display:flex;gap:16px;align-items:center;margin-bottom:10px;flex-wrap:wrap}
.toolbar input[type=search]{font:inherit;padding:6px 10px;border:1px solid #cbd5e1;
border-radius:8px;min-width:280px;background:#fff}
.toolbar label{color:#334155;user-select:none}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:10px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;vertical-align:top;padding:7px 10px;border-bottom:1px solid var(--line)}
th{position:sticky;top:0;background:#f1f5f9;font-weight:600;color:#334155;white-space:nowrap}
tbody tr:last-child td{border-bottom:0}
tbody tr:hover{background:#f8fafc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.txt{max-width:300px;overflow-wrap:anywhere;white-space:pre-wrap}
td.key{white-space:nowrap;font-weight:560}
details summary{cursor:pointer;list-style:none}
details summary::-webkit-details-marker{display:none}
details summary::after{content:" more";color:var(--accent);font-size:12px}
details[open] summary{display:none}
.chip{display:inline-block;padding:0 7px;border-radius:6px;font-weight:600;font-size:12px;
font-variant-numeric:tabular-nums;white-space:nowrap}
.chip.pass{background:var(--good-soft);color:var(--good)}
.chip.fail{background:var(--bad-soft);color:var(--bad)}
.chip.none{background:var(--line);color:#475569}
.expl{display:block;color:var(--muted);font-size:12px;max-width:240px;overflow-wrap:anywhere}
.err{color:var(--bad);overflow-wrap:anywhere}
.side{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.empty{color:var(--muted);font-style:italic}
footer{margin-top:40px;color:var(--faint);font-size:12px}
"""

FILTER_JS = """
(function () {
  var box = document.getElementById("filter"), only = document.getElementById("failed");
  var shown = document.getElementById("shown");
  var rows = Array.prototype.slice.call(document.querySelectorAll("#items tbody tr"));
  function apply() {
    var q = box.value.trim().toLowerCase(), n = 0;
    rows.forEach(function (row) {
      var ok = (!only.checked || row.dataset.failed === "1") &&
        (!q || row.textContent.toLowerCase().indexOf(q) >= 0);
      row.hidden = !ok;
      if (ok) { n += 1; }
    });
    shown.textContent = n + " of " + rows.length + " rows";
  }
  box.addEventListener("input", apply);
  only.addEventListener("change", apply);
  apply();
})();
"""
