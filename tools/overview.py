"""Make nbs/images/fastcam_overview.png, the picture at the top of the README and docs index.

The same synthetic chest X-ray DICOM set, model and box threshold as `fastcam demo` (`fastcam.synth`,
`fastcam.cli.synth_dls`, `gap_linear_learner`, trained for about a minute on one CPU thread; `demo_threshold`), then for
one held-out positive case: the DICOM at its own size and window, its fused Grad-CAM (with `tta`) in its own pixels (as
`get_cmaps` draws it), and the box made from the map next to the true lesion box. Nothing is downloaded.

Run: python tools/overview.py [OUT.png] [DEMO]   (DEMO: a `fastcam demo --out DEMO` folder, whose model is the same recipe, trained already)
"""
import sys, tempfile, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore', category=FutureWarning)
import numpy as np, pandas as pd, torch
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from PIL import Image
from fastai.vision.all import set_seed
from fastcam.synth import make_dicom_set
from fastcam.items import read_dicom
from fastcam.show import show_original_cam
from fastcam.boxes import show_boxes
from fastcam.metrics import box_iou
from fastcam.cli import gap_linear_learner, synth_dls, demo_threshold, DEMO_LAYERS, _layer
import fastcam.core  # noqa: F401  (adds learn.cam)

def main(out=Path(__file__).resolve().parent.parent/'nbs'/'images'/'fastcam_overview.png', demo=None):
    torch.set_num_threads(1)
    t0 = time.time()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d)
        df = make_dicom_set(path, n=600, seed=0)   # the demo's data too (the same seed makes the same files)
        if demo:
            from fastai.learner import load_learner
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', UserWarning)
                learn = load_learner(Path(demo)/'model.pkl')
            learn.dls = synth_dls(path, df, 96, seed=0)
        else:
            set_seed(0, reproducible=True)
            learn = gap_linear_learner(synth_dls(path, df, 96, seed=0), size=96)
            with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(6, 5e-3)
        with learn.no_bar(): acc = float(learn.validate()[1])
        print(f"{'loaded' if demo else 'trained'} in {time.time()-t0:.0f} s, validation accuracy {acc:.2f}")

        # the held-out positive the model is surest about (a fixed rule, not picked by eye)
        pos = df[df.is_valid & (df.label=='nodule')].reset_index(drop=True)
        files = [path/f for f in pos.file]
        res = learn.cam(files, layer=_layer(DEMO_LAYERS), target='nodule', fused=True, tta=True)
        thr = demo_threshold(learn, path, df)
        k = int(res.target_probs[:, 0].argmax())
        r,fn = pos.iloc[k],files[k]
        one = res[k]
        boxes = one.boxes(topk=1, threshold=thr)
        truth = [int(r.x0), int(r.y0), int(r.x1), int(r.y1)]
        b = boxes[['x0', 'y0', 'x1', 'y1']].values[0].tolist()
        iou = float(box_iou([b], [truth])[0, 0])
        print(f"{fn.name}: {r.rows}x{r.cols} px, P(nodule) {float(one.target_probs[0, 0]):.2f}, box {b}, truth {truth}, IoU {iou:.2f}")

        img = read_dicom(fn)
        fig,axs = plt.subplots(1, 3, figsize=(9, 3.5), dpi=100)
        axs[0].imshow(img, cmap='bone'); axs[0].axis('off')
        axs[0].set_title(f"DICOM, {r.cols}x{r.rows} px", fontsize=10)
        show_original_cam(one, 0, ctx=axs[1], title=f"fused Grad-CAM 'nodule' {float(one.target_probs[0, 0]):.2f}")
        axs[1].title.set_fontsize(10)
        show_boxes(img, [b, truth], color=['red', 'lime'], ctx=axs[2], cmap='bone', lw=1.5,
                   title=f"box (red) vs lesion (green): IoU {iou:.2f}")
        axs[2].title.set_fontsize(10)
        fig.subplots_adjust(left=0.005, right=0.995, bottom=0.01, top=0.91, wspace=0.03)
        fig.savefig(out, dpi=100, facecolor='white')
        plt.close(fig)
    im = Image.open(out).convert('RGB')
    im.save(out, optimize=True)
    if out.stat().st_size > 190*1024:   # too big for a README: a 256-colour palette, dithered so the map's gradients stay smooth
        pal = im.quantize(256, method=Image.Quantize.MEDIANCUT)
        im.quantize(palette=pal, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    im = Image.open(out)
    print(f"wrote {out}: {im.size[0]}x{im.size[1]} px, {out.stat().st_size/1024:.0f} KB in {time.time()-t0:.0f} s")
    return out

if __name__ == '__main__': main(*sys.argv[1:])
