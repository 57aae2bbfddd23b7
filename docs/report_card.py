"""One case card of a parity HTML report as a PNG (headless Chromium): python docs/report_card.py REPORT_DIR CASE OUT.png

docs/report-card.png: python docs/report_card.py reports/parity shapes_bf16/step20/p2/aitk-preview docs/report-card.png
"""
import re, subprocess, sys, tempfile
from pathlib import Path
from PIL import Image, ImageChops

rep, want, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
html = (rep / "report.html").read_text()
sections = re.findall(r'<section class="case"[^>]*>.*?</section>', html, re.S)
picks = [s for s in sections if (want + " <span") in s.split("</h3>")[0]]
if not picks:
    sys.exit(f"{rep / 'report.html'}: no case card named {want}")
pick = picks[0]
body = html.index("<body>") + len("<body>")
page = html[:body] + '<div style="width:1080px;padding:8px">' + pick + "</div></body></html>"
tmp = rep / "_card.html"
tmp.write_text(page)
shot = rep / "_card_full.png"
with tempfile.TemporaryDirectory() as prof:
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={prof}",
                    "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1100,1400", tmp.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
im = Image.open(shot).convert("RGB")
bg = Image.new("RGB", im.size, im.getpixel((im.width - 1, im.height - 1)))
box = ImageChops.difference(im, bg).getbbox()
im = im.crop((0, 0, im.width, min(im.height, box[3] + 12)))
im.save(out, optimize=True)
if out.stat().st_size > 290_000:
    im.quantize(128).save(out, optimize=True)
print(out, im.size, out.stat().st_size)
tmp.unlink(); shot.unlink()
