/// The `/status` page: one self-contained HTML document (no external script, style or font, so it works on
/// an isolated gateway and under a strict Content-Security-Policy) that reads `/status.json` every two seconds.
enum StatusPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>adit status</title>
<style>
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d2330; background: #f6f7f9; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  .meta { color: #5b6473; margin-bottom: 16px; }
  .badge { display: inline-block; padding: 2px 8px; border-radius: 10px; font-weight: 600; font-size: 12px; }
  .ok { background: #d9f2e3; color: #17643a; } .bad { background: #fbe0e0; color: #8a1f1f; }
  table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #eceef2; white-space: nowrap; }
  th { background: #eef0f4; font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  ul { margin: 4px 0 16px; padding-left: 20px; }
  .empty { color: #5b6473; padding: 12px; background: #fff; }
  #error { color: #8a1f1f; }
</style>
</head>
<body>
<h1>adit <span id="role"></span> <span id="ready" class="badge"></span></h1>
<div class="meta"><span id="state"></span> · version <span id="version"></span> · up <span id="uptime"></span> · <span id="updated"></span> <span id="error"></span></div>
<ul id="details"></ul>
<table>
  <thead><tr><th>identity</th><th>peer</th><th>state</th><th>uptime</th><th>round trip</th><th>streams</th><th>windows</th><th>sent</th><th>received</th><th>compression</th></tr></thead>
  <tbody id="sessions"></tbody>
</table>
<div id="none" class="empty" hidden>No tunnel sessions.</div>
<script>
"use strict";
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function duration(s) {
  s = Math.floor(s); const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? d + "d " + h + "h" : h ? h + "h " + m + "m" : m ? m + "m " + (s % 60) + "s" : s + "s";
}
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; }
async function refresh() {
  try {
    const r = await fetch("status.json", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    document.getElementById("role").textContent = s.role;
    const ready = document.getElementById("ready");
    ready.textContent = s.ready ? "ready" : "not ready"; ready.className = "badge " + (s.ready ? "ok" : "bad");
    document.getElementById("state").textContent = s.state;
    document.getElementById("version").textContent = s.version;
    document.getElementById("uptime").textContent = duration(s.uptimeSeconds);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.getElementById("error").textContent = "";
    const details = document.getElementById("details"); details.replaceChildren();
    for (const d of s.details) { const li = document.createElement("li"); li.textContent = d; details.appendChild(li); }
    const body = document.getElementById("sessions"); body.replaceChildren();
    for (const x of s.sessions) {
      const row = body.insertRow(); row.className = "session";
      cell(row, x.identity); cell(row, x.peer); cell(row, x.state); cell(row, duration(x.uptimeSeconds), "num");
      cell(row, x.roundTripMilliseconds == null ? "—" : x.roundTripMilliseconds.toFixed(2) + " ms", "num");
      cell(row, x.streams + (x.listeners ? " (+" + x.listeners + " listening)" : ""), "num");
      cell(row, bytes(x.receiveWindowBytes), "num");
      cell(row, bytes(x.bytesSent), "num"); cell(row, bytes(x.bytesReceived), "num");
      cell(row, x.compressionRatio == null ? "—" : x.compressionRatio.toFixed(2) + "×", "num");
    }
    document.getElementById("none").hidden = s.sessions.length > 0;
  } catch (e) {
    document.getElementById("error").textContent = "(cannot reach the process: " + e.message + ")";
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""#
}
