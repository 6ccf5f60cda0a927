"""Make nbs/images/fastcam_report.png, the README's picture of the HTML report `fastcam demo` writes.

Run `fastcam demo --out DEMO` first (it trains the small model and runs `fastcam run` on the held-out files), then
`python tools/report_shot.py DEMO/run/report.html [OUT.png]`. The page is opened in headless Chromium (tools/browser.py),
the gallery filtered to the files predicted 'nodule' and sorted by the target's probability, high first, as a reviewer
would start, and the window photographed; the PNG is reduced to a 256-colour palette to stay small.
"""
import sys
from pathlib import Path
from PIL import Image
sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import Browser

def main(report, out=Path(__file__).resolve().parent.parent/'nbs'/'images'/'fastcam_report.png', width:int=1600, height:int=1560):
    out = Path(out)
    with Browser(width, height) as b:
        b.open(Path(report).resolve().as_uri())
        b.eval("(()=>{const s=document.querySelector('#f-pred');s.value='nodule';s.dispatchEvent(new Event('input'));})()")
        print(b.eval("document.querySelector('#shown').textContent"))
        b.eval("Promise.all([...document.images].map(i=>{i.loading='eager';return i.decode().catch(()=>null)}))")   # the pictures below the fold too
        b.screenshot(out)
    im = Image.open(out).convert('RGB')
    pal = im.quantize(256, method=Image.Quantize.MEDIANCUT)
    im.quantize(palette=pal, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    print(f"wrote {out}: {im.size[0]}x{im.size[1]} px, {out.stat().st_size/1024:.0f} KB")
    return out

if __name__ == '__main__': main(*sys.argv[1:])
