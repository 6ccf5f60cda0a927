"Shared fixtures: small synthetic image sets and untrained fastai learners (no downloads, CPU, seconds)."
import os
os.environ.setdefault('MPLBACKEND', 'Agg')
import numpy as np, pytest, torch
from PIL import Image
from fastai.vision.all import ImageDataLoaders, Resize, vision_learner, resnet18

CLASSES = ('circle', 'square', 'stripe')

def _draw(cls, rng, size=64):
    "A noisy grayscale-ish RGB image with one shape whose kind is the class"
    im = rng.normal(90, 20, (size, size, 3))
    y, x = np.mgrid[:size, :size]
    cy, cx, r = rng.integers(16, size-16, 2).tolist() + [int(rng.integers(6, 12))]
    if cls == 'circle': m = (y-cy)**2 + (x-cx)**2 < r*r
    elif cls == 'square': m = (abs(y-cy) < r) & (abs(x-cx) < r)
    else: m = (abs(y-cy) < 3) & (abs(x-cx) < 2*r)
    im[m] += 120
    return Image.fromarray(im.clip(0, 255).astype(np.uint8))

@pytest.fixture(scope='session')
def image_folder(tmp_path_factory):
    "24 PNGs per class in class-named folders; sizes vary and are not square"
    root = tmp_path_factory.mktemp('shapes')
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root/c).mkdir()
        for i in range(24):
            im = _draw(c, rng)
            if i % 3 == 1: im = im.resize((80, 64))
            if i % 3 == 2: im = im.resize((64, 96))
            im.save(root/c/f'{c}_{i}.png')
    return root

@pytest.fixture(scope='session')
def dls(image_folder):
    return ImageDataLoaders.from_folder(image_folder, valid_pct=0.25, seed=42, item_tfms=Resize(64), bs=8, num_workers=0)

def frame_learner(root, df, model, size:int=48):
    "A fastai Learner of hand-made `model` over the PNGs `df` names (file, label, is_valid) in `root`, squished to `size` px"
    from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, ColReader, ColSplitter, Learner, CrossEntropyLossFlat
    dls = DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=ColReader('file', pref=root), get_y=ColReader('label'),
                    splitter=ColSplitter('is_valid'), item_tfms=Resize(size, method='squish')).dataloaders(df, bs=4, num_workers=0)
    return Learner(dls, model, loss_func=CrossEntropyLossFlat())

def labelled_squares(tmp_path_factory, name:str, make_set, model):
    "`(root, df, boxes, learner)`: the PNG set `make_set(root)` writes (its frame and true boxes, also saved as root/boxes.csv) and a Learner of `model` over it"
    root = tmp_path_factory.mktemp(name)
    df,bx = make_set(root)
    bx.to_csv(root/'boxes.csv', index=False)
    return root,df,bx,frame_learner(root, df, model)

def make_learner(dls, **kw):
    torch.manual_seed(0)
    return vision_learner(dls, resnet18, pretrained=False, **kw)

@pytest.fixture
def learn(dls):
    "A fresh untrained 3-class resnet18 Learner (fastai's default concat-pool head)"
    return make_learner(dls)

@pytest.fixture
def xb(dls):
    "One validation batch of 8 images, preprocessed by the DataLoader"
    return dls.valid.one_batch()[0]

def exported_dicom_learner(root, n:int=16, seed:int=1):
    "`learn`: a tiny XResNet trained one epoch on `n` synthetic DICOMs in `root/'train'` (squished to 64 px) and exported to `root/'model.pkl'`, its weights in `root/'weights.pth'`"
    from fastai.vision.all import DataBlock, CategoryBlock, ColReader, ColSplitter
    from fastcam.synth import make_dicom_set
    from fastcam.items import DicomBlock
    from fastcam.cli import tiny_xresnet
    df = make_dicom_set(root/'train', n=n, seed=seed)
    dblock = DataBlock(blocks=(DicomBlock(), CategoryBlock), get_x=ColReader('file', pref=root/'train'), get_y=ColReader('label'),
                       splitter=ColSplitter('is_valid'), item_tfms=Resize(64, method='squish'))
    from fastai.torch_core import set_seed
    set_seed(0, reproducible=True)   # python's random too: fastai shuffles with it, so the model would depend on which tests ran before
    learn = vision_learner(dblock.dataloaders(df, bs=8, num_workers=0), tiny_xresnet, pretrained=False)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    learn.export(root/'model.pkl')
    torch.save(learn.model.state_dict(), root/'weights.pth')
    return learn
