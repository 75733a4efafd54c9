"""The pages: one layout, each page's own markup, and its data as JSON in the page (studio.js draws from it and
keeps it live with server-sent events). No template engine and no CDN: the CSS and JS ship in assets/."""

from __future__ import annotations

import html
import json
import re

NAV = [("/", "Runs"), ("/new", "New run"), ("/playground", "Playground")]

BODIES = {
    "runs": """
<h1>Runs</h1>
<p class=bar><button id=compare disabled>Compare selected</button> <span id=jobs-note></span></p>
<table id=runs class=grid><thead><tr><th></th><th>run</th><th>base</th><th>method</th><th>status</th>
<th>step</th><th>train loss</th><th>eval loss</th><th>metric</th><th>started</th><th>duration</th>
<th>peak memory</th></tr></thead><tbody></tbody></table>
<h2>Jobs</h2><table id=jobs class=grid><thead><tr><th>job</th><th>command</th><th>status</th></tr></thead>
<tbody></tbody></table>""",
    "run": """
<h1 id=run-name></h1>
<section class=live><div><b>status</b> <span id=status></span></div><div><b>step</b> <span id=step></span></div>
<div><b>ETA</b> <span id=eta></span></div><div><b>tokens/s</b> <span id=tps></span></div>
<div><b>loss</b> <span id=loss></span></div></section>
<section class=actions><button id=stop>Stop (checkpoint)</button> <button id=resume>Resume</button>
<button id=export>Export GGUF</button> <button id=merge>Merge</button>
<input id=eval-data placeholder="eval file (relative to root)"> <button id=eval>Eval</button>
<input id=push-repo placeholder="owner/name"> <button id=push>Push (dry run first)</button></section>
<div class=charts><div><h3>loss</h3><svg id=loss-chart class=chart></svg></div>
<div><h3>learning rate</h3><svg id=lr-chart class=chart></svg></div></div>
<h2>Jobs</h2><div id=run-jobs></div>
<h2>Eval results</h2><div id=evals></div>
<h2>Predictions (mistakes first)</h2><select id=pred-file></select><div id=predictions></div>
<h2>Card</h2><div id=card class=card></div>
<h2>config.yml</h2><pre id=config></pre>""",
    "new": """
<h1>New run</h1>
<p class=bar>Start from <select id=start-from><option value="">(empty)</option></select>
name <input id=run-name-input value=run-1> <button id=start>Start</button></p>
<p>Command: <code id=command>finetune train configs/run-1.yml</code> <span id=start-result></span></p>
<div class=editor-wrap><div class=editor><pre id=gutter></pre><textarea id=yaml spellcheck=false></textarea></div>
<div class=side><h3>Messages</h3><ul id=problems></ul>
<h3>Plan</h3><p>device <select id=device><option value="">this machine</option><option>cpu</option>
<option>h100-80gb</option><option>h200</option><option>a100-80gb</option><option>a100-40gb</option>
<option>l40s</option><option>l4</option><option>a10g</option><option>rtx4090</option><option>rtx3090</option>
</select> GPUs <input id=gpus type=number value=1 min=1 max=64></p><div id=plan></div>
<h3>Data preview</h3><button id=preview-btn>Show the first rows as trained</button><div id=preview></div>
</div></div>""",
    "compare": """
<h1>Compare</h1><svg id=compare-chart class=chart></svg><div id=legend></div>
<h2>Config differences</h2><table id=diff class=grid></table>
<h2>Results</h2><table id=results class=grid></table>""",
    "playground": """
<h1>Playground</h1>
<p class=bar>Compare: <label><input type=checkbox id=with-base> the base</label>
<select id=run-a></select> <select id=run-b><option value="">(none)</option></select></p>
<p>max new tokens <input id=max-new type=number value=64> temperature <input id=temperature type=number
value=0 step=0.1> system <input id=system placeholder="(optional)"></p>
<textarea id=prompt rows=3 placeholder="Ask something"></textarea><p><button id=send>Send</button></p>
<div id=answers class=answers></div>""",
}


def render(name: str, token: str, **data) -> str:
    """The page `name` with `data` embedded as JSON for studio.js."""
    nav = " ".join(f'<a href="{href}">{label}</a>' for href, label in NAV)
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>finetune studio</title>
<meta name=studio-token content="{html.escape(token)}">
<link rel=stylesheet href="/assets/studio.css"></head>
<body data-page="{name}"><header><b>finetune studio</b> {nav}</header>
<main>{BODIES[name]}</main>
<script id=page-data type="application/json">{payload}</script>
<script src="/assets/studio.js"></script></body></html>"""


def markdown(text: str) -> str:
    """The model card as HTML: headings, paragraphs, lists, tables and code blocks (escaped; no raw HTML)."""
    out, table, code, para, items = [], [], None, [], []
    if text.startswith("---") and (end := text.find("\n---", 3)) != -1:
        text = text[end + 4 :]  # the card's YAML metadata: for the hub, not for reading

    def flush():
        if items:
            out.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
            items.clear()
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|?[\s:|-]+\|?", r)]
            cells = [[_inline(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0]) if cells else ""
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
            out.append(f"<table class=grid><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in text.splitlines():
        if code is not None:
            if line.startswith("```"):
                out.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            flush()
            code = []
        elif m := re.match(r"^(#{1,6})\s+(.*)", line):
            flush()
            level = len(m.group(1))
            out.append(f"<h{level + 2}>{_inline(m.group(2))}</h{level + 2}>")
        elif line.lstrip().startswith("|"):
            table.append(line)
        elif m := re.match(r"^\s*[-*]\s+(.*)", line):
            if para or table:
                flush()
            items.append(_inline(m.group(1)))
        elif not line.strip():
            flush()
        else:
            para.append(line)
    flush()
    if code:
        out.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
    return "\n".join(out)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r'<a href="\2">\1</a>', text)
